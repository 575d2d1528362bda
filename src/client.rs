//! `emostream client`: the original interactive client, done properly. It subscribes, sends emojis at
//! a rate while it receives, prints each window as a line of emojis, and unsubscribes on exit.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use rand::seq::IndexedRandom;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::cli::parse_duration;
use crate::core::swarm::SwarmMessage;

/// How a client receives windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Sse,
    Ws,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Subscription API base URL.
    #[arg(long, env = "EMOSTREAM_API", default_value = "http://127.0.0.1:5002")]
    pub api: String,
    /// Ingest API base URL.
    #[arg(long, env = "EMOSTREAM_INGEST", default_value = "http://127.0.0.1:5001")]
    pub ingest: String,
    /// Your client id (asked for when stdin is a terminal; otherwise random).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Cluster to join (1-based); with --subscriber. Omit both to be placed on the least loaded one.
    #[arg(long)]
    pub cluster: Option<u32>,
    /// Subscriber within the cluster (1-based).
    #[arg(long)]
    pub subscriber: Option<u32>,
    /// Emojis sent per second (0 only watches).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Emojis to send, comma-separated, picked at random.
    #[arg(long)]
    pub emojis: Option<String>,
    /// Stop after this long (e.g. 30s); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How windows arrive.
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
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

/// Fills what the flags left out: asked when stdin is a terminal, defaults otherwise.
fn complete(mut a: ClientArgs) -> Result<ClientArgs> {
    let interactive = std::io::stdin().is_terminal();
    let random_id = format!("client-{:04}", rand::random::<u16>() % 10_000);
    if a.client_id.is_none() {
        a.client_id = Some(if interactive { prompt("Client id", &random_id)? } else { random_id });
    }
    if interactive && a.cluster.is_none() && a.subscriber.is_none() {
        let c = prompt("Cluster (blank: least loaded)", "")?;
        if !c.is_empty() {
            a.cluster = Some(c.parse().with_context(|| format!("cluster {c:?} is not a number"))?);
            let s = prompt("Subscriber", "1")?;
            a.subscriber = Some(s.parse().with_context(|| format!("subscriber {s:?} is not a number"))?);
        }
    }
    if a.rate.is_none() {
        a.rate = Some(if interactive {
            let r = prompt("Emojis per second", "5")?;
            r.parse().with_context(|| format!("rate {r:?} is not a number"))?
        } else {
            5.0
        });
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
    format!("{time}  {swarm}  (total {})", m.total)
}

/// Runs the client until `--duration` passes or Ctrl-C.
///
/// # Errors
/// When the API cannot be reached or refuses the subscription.
pub async fn run(args: ClientArgs) -> Result<()> {
    let a = complete(args)?;
    let client_id = a.client_id.clone().expect("completed");
    let http = reqwest::Client::new();
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
    let sub: Subscribed = resp.json().await.context("unexpected answer to POST /subscribe")?;
    println!("{client_id} subscribed to cluster {} subscriber {}; Ctrl-C to stop", sub.cluster_id, sub.subscriber_id);

    let stop = CancellationToken::new();
    let emojis: Vec<String> =
        a.emojis.as_deref().unwrap_or("").split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    let sender = tokio::spawn(send_loop(http.clone(), a.ingest.clone(), client_id.clone(), a.rate.unwrap_or(0.0), emojis, stop.clone()));
    let receiver = match a.transport {
        Transport::Sse => {
            let url = sub.stream_url.unwrap_or_else(|| format!("{}{}", a.api, sub.stream_path));
            tokio::spawn(sse_loop(http.clone(), url, stop.clone()))
        }
        Transport::Ws => {
            let url = sub.ws_url.unwrap_or_else(|| format!("{}{}", a.api.replacen("http", "ws", 1), sub.ws_path));
            tokio::spawn(ws_loop(url, stop.clone()))
        }
    };
    let until = async {
        match a.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = until => {}
        () = crate::topology::shutdown_signal() => {}
        () = stop.cancelled() => {}
    }
    stop.cancel();
    let (sent, refused) = sender.await.unwrap_or((0, 0));
    let windows = receiver.await.unwrap_or(0);
    let _ = http.post(format!("{}/unsubscribe", a.api)).json(&serde_json::json!({ "client_id": client_id })).send().await;
    println!("unsubscribed {client_id}: sent {sent} emojis ({refused} refused), received {windows} windows");
    Ok(())
}

async fn send_loop(http: reqwest::Client, ingest: String, client_id: String, rate: f64, emojis: Vec<String>, stop: CancellationToken) -> (u64, u64) {
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

async fn sse_loop(http: reqwest::Client, url: String, stop: CancellationToken) -> u64 {
    let mut windows = 0;
    let resp = match http.get(&url).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            eprintln!("stream refused ({}): {}", r.status(), r.text().await.unwrap_or_default());
            stop.cancel();
            return 0;
        }
        Err(e) => {
            eprintln!("cannot open the stream {url}: {e}");
            stop.cancel();
            return 0;
        }
    };
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            () = stop.cancelled() => return windows,
        };
        let Some(Ok(chunk)) = chunk else {
            println!("stream ended by the server");
            stop.cancel();
            return windows;
        };
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: String = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            if let Ok(m) = serde_json::from_str::<SwarmMessage>(&data) {
                windows += 1;
                println!("{}", render(&m));
            }
        }
    }
}

async fn ws_loop(url: String, stop: CancellationToken) -> u64 {
    use tokio_tungstenite::tungstenite::Message;
    let mut windows = 0;
    let (mut ws, _) = match tokio_tungstenite::connect_async(&url).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("cannot open the WebSocket {url}: {e}");
            stop.cancel();
            return 0;
        }
    };
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            () = stop.cancelled() => { let _ = ws.close(None).await; return windows; }
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                if let Ok(m) = serde_json::from_str::<SwarmMessage>(&t) {
                    windows += 1;
                    println!("{}", render(&m));
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                println!("stream ended by the server");
                stop.cancel();
                return windows;
            }
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
