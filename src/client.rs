//! `emostream client`: the original interactive client, done properly. It subscribes, sends emojis at
//! a rate while it receives, prints each window as a line of emojis, and unsubscribes on exit.
//!
//! It connects where the subscribe answer says (`stream_url` / `ws_url`: in distributed mode, the
//! subscriber process that holds it). When the stream drops it reconnects with backoff, resuming after
//! the last window it printed (`Last-Event-ID`, or `?after=` over WebSocket), so a subscriber restart
//! costs it no window and repeats none.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use rand::seq::IndexedRandom;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::core::swarm::SwarmMessage;

/// How a client receives windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
}

/// What `emostream client` was asked to do (its flags, see `emostream client --help`); what is
/// missing is asked for at a terminal.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Subscription API base URL.
    pub api: String,
    /// Ingest API base URL.
    pub ingest: String,
    /// Your client id (asked for when stdin is a terminal; otherwise random).
    pub client_id: Option<String>,
    /// Cluster to join (1-based); with --subscriber. Omit both to be placed on the least loaded one.
    pub cluster: Option<u32>,
    /// Subscriber within the cluster (1-based).
    pub subscriber: Option<u32>,
    /// Emojis sent per second (0 only watches).
    pub rate: Option<f64>,
    /// Emojis to send, comma-separated, picked at random.
    pub emojis: Option<String>,
    /// Stop after this long (e.g. 30s); default: until Ctrl-C.
    pub duration: Option<Duration>,
    /// How windows arrive.
    pub transport: Transport,
}

fn prompt(question: &str, default: &str) -> Result<String> {
    print!("{question} [{default}]: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let line = line.trim();
    Ok(if line.is_empty() { default.to_string() } else { line.to_string() })
}

/// Asks until the answer parses: a typo at a prompt asks again instead of ending the client.
fn prompt_parse<T: std::str::FromStr>(question: &str, default: &str, what: &str) -> Result<T> {
    loop {
        let answer = prompt(question, default)?;
        match answer.parse() {
            Ok(v) => return Ok(v),
            Err(_) if std::io::stdin().is_terminal() => say_err(&format!("“{answer}” is not {what}; try again")),
            Err(_) => bail!("“{answer}” is not {what}"),
        }
    }
}

/// An answer that may be left blank.
struct Blank<T>(Option<T>);

impl<T: std::str::FromStr> std::str::FromStr for Blank<T> {
    type Err = T::Err;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() { Ok(Self(None)) } else { s.parse().map(|v| Self(Some(v))) }
    }
}

fn say_err(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Fills what the flags left out: asked when stdin is a terminal, defaults otherwise.
fn complete(mut a: ClientConfig) -> Result<ClientConfig> {
    let interactive = std::io::stdin().is_terminal();
    let random_id = format!("client-{:04}", rand::random::<u16>() % 10_000);
    if a.client_id.is_none() {
        a.client_id = Some(if interactive { prompt("Client id", &random_id)? } else { random_id });
    }
    if interactive && a.cluster.is_none() && a.subscriber.is_none() {
        let c: Blank<u32> = prompt_parse("Cluster (blank: least loaded)", "", "a cluster number (or blank)")?;
        if let Blank(Some(c)) = c {
            a.cluster = Some(c);
            a.subscriber = Some(prompt_parse("Subscriber", "1", "a subscriber number")?);
        }
    }
    if a.rate.is_none() {
        a.rate = Some(if interactive { prompt_parse("Emojis per second", "5", "a number")? } else { 5.0 });
    }
    if a.emojis.is_none() {
        a.emojis = Some(if interactive { prompt("Emojis to send", "😀,😂,😍,👍")? } else { "😀,😂,😍,👍".into() });
    }
    if a.cluster.is_some() != a.subscriber.is_some() {
        bail!("give both --cluster and --subscriber, or neither to be placed on the least loaded subscriber");
    }
    if !a.rate.is_some_and(|r| r.is_finite() && r >= 0.0) {
        bail!("--rate must be a number of emojis per second, 0 or more");
    }
    Ok(a)
}

#[derive(Deserialize)]
struct Subscribed {
    cluster_id: u32,
    subscriber_id: u32,
    stream_path: String,
    ws_path: String,
    #[serde(default)]
    stream_url: Option<String>,
    #[serde(default)]
    ws_url: Option<String>,
}

/// Renders a window as the original did: the swarm, each emoji repeated by its count.
pub fn render(m: &SwarmMessage) -> String {
    let time = chrono::DateTime::from_timestamp_millis(m.window_end).map(|t| t.format("%H:%M:%S").to_string()).unwrap_or_default();
    let swarm: String = m.swarm.iter().map(|(e, n)| e.repeat(usize::try_from(*n).unwrap_or(0).min(100))).collect();
    let swarm = if swarm.is_empty() { "·".to_string() } else { swarm };
    let mut line = format!("{time}  {swarm}  (total {}", m.total);
    if let Some(mood) = m.mood.mood {
        line.push_str(&format!(", mood {mood:+.2}"));
    }
    line.push(')');
    for s in &m.mood.surges {
        line.push_str(&format!("  surge: {} ×{:.1}", s.emotion, s.ratio));
    }
    line
}

/// Runs the client until `--duration` passes or Ctrl-C.
///
/// # Errors
/// When the API cannot be reached or refuses the subscription.
pub async fn run(args: ClientConfig) -> Result<()> {
    let a = complete(args)?;
    let client_id = a.client_id.clone().expect("completed");
    let http = reqwest::Client::new();
    let mut sub = subscribe(&http, &a, &client_id).await?;
    crate::say!("{client_id} subscribed to cluster {} subscriber {}; Ctrl-C to stop", sub.cluster_id, sub.subscriber_id);

    let stop = CancellationToken::new();
    let emojis: Vec<String> =
        a.emojis.as_deref().unwrap_or("").split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    let sender = tokio::spawn(send_loop(http.clone(), a.ingest.clone(), client_id.clone(), a.rate.unwrap_or(0.0), emojis, stop.clone()));
    let until = async {
        match a.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    let signal = crate::pipeline::shutdown_signal();
    tokio::pin!(signal);
    let (mut windows, mut forgotten) = (0, 0);
    loop {
        let url = match a.transport {
            Transport::Sse => sub.stream_url.clone().unwrap_or_else(|| format!("{}{}", a.api, sub.stream_path)),
            Transport::Ws => sub.ws_url.clone().unwrap_or_else(|| format!("{}{}", a.api.replacen("http", "ws", 1), sub.ws_path)),
        };
        // Its own token: a stream the server ended (it forgot this client) stops the stream only.
        let stream = stop.child_token();
        let mut receiver = tokio::spawn(receive(http.clone(), a.transport, url, stream.clone(), |m| crate::say!("{}", render(&m))));
        let got = tokio::select! {
            () = &mut until => None,
            () = &mut signal => None,
            () = stop.cancelled() => None,
            got = &mut receiver => Some(got.unwrap_or(0)),
        };
        let Some(got) = got else {
            stop.cancel();
            windows += receiver.await.unwrap_or(0);
            break;
        };
        windows += got;
        // The stream ended on the server's word: after a restart of an embedded server (or an
        // expired subscription) it no longer knows this client. Subscribe again, a few times.
        forgotten = if got > 0 { 1 } else { forgotten + 1 };
        if forgotten > 3 {
            say_err("the server keeps ending this client's stream; giving up");
            stop.cancel();
            break;
        }
        crate::say!("the server no longer knows {client_id} (restarted?); subscribing again");
        sub = tokio::select! {
            s = subscribe_again(&http, &a, &client_id) => s,
            () = &mut until => { stop.cancel(); break }
            () = &mut signal => { stop.cancel(); break }
        };
        crate::say!("{client_id} subscribed again to cluster {} subscriber {}", sub.cluster_id, sub.subscriber_id);
    }
    let (sent, refused) = sender.await.unwrap_or((0, 0));
    let _ = http.post(format!("{}/unsubscribe", a.api)).json(&serde_json::json!({ "client_id": client_id })).send().await;
    crate::say!("unsubscribed {client_id}: sent {sent} emojis ({refused} refused), received {windows} windows");
    Ok(())
}

/// `POST /subscribe` for this client.
async fn subscribe(http: &reqwest::Client, a: &ClientConfig, client_id: &str) -> Result<Subscribed> {
    let mut body = serde_json::json!({ "client_id": client_id });
    if let (Some(c), Some(s)) = (a.cluster, a.subscriber) {
        body["cluster_id"] = c.into();
        body["subscriber_id"] = s.into();
    }
    let resp = http
        .post(format!("{}/subscribe", a.api))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the API at {} (is `emostream up` running? see --api)", a.api))?;
    if !resp.status().is_success() {
        let status = resp.status();
        bail!("subscribe refused ({status}): {}", resp.text().await.unwrap_or_default());
    }
    resp.json().await.context("unexpected answer to POST /subscribe")
}

/// [`subscribe`], retried with a backoff while the API is away or refuses.
async fn subscribe_again(http: &reqwest::Client, a: &ClientConfig, client_id: &str) -> Subscribed {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match subscribe(http, a, client_id).await {
            Ok(s) => return s,
            Err(e) => {
                say_err(&format!("{e:#}; trying again in {backoff:?}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn send_loop(
    http: reqwest::Client,
    ingest: String,
    client_id: String,
    rate: f64,
    emojis: Vec<String>,
    stop: CancellationToken,
) -> (u64, u64) {
    let (mut sent, mut refused) = (0, 0);
    if rate <= 0.0 || emojis.is_empty() {
        stop.cancelled().await;
        return (0, 0);
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let url = format!("{ingest}/emoji");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return (sent, refused),
        }
        let emoji = emojis.choose(&mut rand::rng()).expect("non-empty").clone();
        let body = serde_json::json!({ "emoji": emoji, "client_id": client_id, "timestamp": crate::stages::now_ms() });
        match http.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => sent += 1,
            Ok(r) => {
                refused += 1;
                if refused <= 3 {
                    eprintln!("emoji {emoji} refused ({}): {}", r.status(), r.text().await.unwrap_or_default());
                }
            }
            Err(e) => {
                refused += 1;
                if refused <= 3 {
                    eprintln!("cannot reach ingest at {ingest}: {e}");
                }
            }
        }
    }
}

/// How one connection of a stream ended.
#[derive(Debug)]
enum Ended {
    /// The client is stopping.
    Stopped,
    /// Not subscribed any more (404): nothing to reconnect to.
    Gone(String),
    /// The registry placed the client elsewhere (409 with the URL to use).
    Moved(String),
    /// Connection refused, closed or broken: reconnect after a backoff.
    Dropped(String),
}

/// First wait before reconnecting a dropped stream; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Receives a client's windows from its stream URL until `stop` (or until it is no longer subscribed),
/// calling `on_window` for each. When the stream drops it reconnects with backoff and resumes after
/// the last window received, so no window is missed or repeated while the subscriber still holds it;
/// a 409 from a subscriber that does not hold the client is followed to the URL it gives.
/// Returns how many windows it received.
pub async fn receive(
    http: reqwest::Client,
    transport: Transport,
    mut url: String,
    stop: CancellationToken,
    mut on_window: impl FnMut(SwarmMessage) + Send,
) -> u64 {
    let mut windows = 0;
    let mut last: Option<i64> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut moves = 0;
    loop {
        let before = windows;
        let ended = match transport {
            Transport::Sse => sse_once(&http, &url, &mut last, &mut windows, &stop, &mut on_window).await,
            Transport::Ws => ws_once(&url, &mut last, &mut windows, &stop, &mut on_window).await,
        };
        if windows > before {
            backoff = FIRST_BACKOFF;
            moves = 0;
        }
        match ended {
            Ended::Stopped => return windows,
            Ended::Gone(why) => {
                crate::say!("stream ended: {why}");
                stop.cancel();
                return windows;
            }
            Ended::Moved(to) if moves < 3 => {
                moves += 1;
                crate::say!("moved: reconnecting to {to}");
                url = to;
            }
            Ended::Moved(to) => return give_up(&format!("sent to {to} again and again"), &stop, windows),
            Ended::Dropped(why) => {
                eprintln!("stream dropped ({why}); reconnecting in {backoff:?}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return windows,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn give_up(why: &str, stop: &CancellationToken, windows: u64) -> u64 {
    eprintln!("giving up on the stream: {why}");
    stop.cancel();
    windows
}

/// What a refused stream request means for the client.
async fn refused(resp: reqwest::Response, ws: bool) -> Ended {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let error = body["error"].as_str().unwrap_or_default().to_string();
    match status.as_u16() {
        404 => Ended::Gone(error),
        409 => match body[if ws { "ws_url" } else { "stream_url" }].as_str() {
            Some(url) => Ended::Moved(url.to_string()),
            None => Ended::Dropped(format!("{status}: {error}")),
        },
        _ => Ended::Dropped(format!("{status}: {error}")),
    }
}

async fn sse_once(
    http: &reqwest::Client,
    url: &str,
    last: &mut Option<i64>,
    windows: &mut u64,
    stop: &CancellationToken,
    on_window: &mut (dyn FnMut(SwarmMessage) + Send),
) -> Ended {
    let mut req = http.get(url);
    if let Some(id) = last {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let resp = tokio::select! {
        r = req.send() => r,
        () = stop.cancelled() => return Ended::Stopped,
    };
    let resp = match resp {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return refused(r, false).await,
        Err(e) => return Ended::Dropped(format!("cannot open {url}: {e}")),
    };
    let mut body = resp.bytes_stream();
    let mut splitter = crate::core::sse::Splitter::default();
    loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            () = stop.cancelled() => return Ended::Stopped,
        };
        let chunk = match chunk {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Ended::Dropped(e.to_string()),
            None => return Ended::Dropped("closed by the server".into()),
        };
        splitter.push(&chunk, |event| {
            let (id, Some(data)) = crate::core::sse::fields(event) else { return };
            if let Ok(m) = serde_json::from_slice::<SwarmMessage>(&data) {
                *windows += 1;
                *last = id.and_then(|i| std::str::from_utf8(i).ok()?.parse().ok()).or(Some(m.window_start));
                on_window(m);
            }
        });
    }
}

async fn ws_once(
    url: &str,
    last: &mut Option<i64>,
    windows: &mut u64,
    stop: &CancellationToken,
    on_window: &mut (dyn FnMut(SwarmMessage) + Send),
) -> Ended {
    use tokio_tungstenite::tungstenite::{Error, Message};
    let target = match last {
        Some(w) => format!("{url}{}after={w}", if url.contains('?') { '&' } else { '?' }),
        None => url.to_string(),
    };
    let connected = tokio::select! {
        c = tokio_tungstenite::connect_async(&target) => c,
        () = stop.cancelled() => return Ended::Stopped,
    };
    let mut ws = match connected {
        Ok((ws, _)) => ws,
        Err(Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
            let error = body["error"].as_str().unwrap_or_default().to_string();
            return match (status, body["ws_url"].as_str()) {
                (404, _) => Ended::Gone(error),
                (409, Some(to)) => Ended::Moved(to.to_string()),
                _ => Ended::Dropped(format!("{status}: {error}")),
            };
        }
        Err(e) => return Ended::Dropped(format!("cannot open {url}: {e}")),
    };
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            () = stop.cancelled() => { let _ = ws.close(None).await; return Ended::Stopped; }
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                if let Ok(m) = serde_json::from_str::<SwarmMessage>(&t) {
                    *windows += 1;
                    *last = Some(m.window_start);
                    on_window(m);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                // The server closes with "unsubscribed" when the client left or moved: ask where it is.
                return Ended::Dropped(if reason.is_empty() { "closed by the server".into() } else { reason });
            }
            None => return Ended::Dropped("closed by the server".into()),
            Some(Err(e)) => return Ended::Dropped(e.to_string()),
            Some(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::scale::ScaleRule;

    #[test]
    fn renders_the_swarm_as_a_line() {
        let counts = [("😀".to_string(), 3000), ("😂".to_string(), 2234)].into_iter().collect();
        let m = SwarmMessage::new(0, 2000, counts, 0, ScaleRule::Normalize(4), 0);
        assert_eq!(render(&m), "00:00:02  😀😀😀😂😂  (total 5234)");
    }
}
