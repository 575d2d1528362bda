//! Client streams: `GET /stream/{client_id}` (Server-Sent Events) and `GET /ws/{client_id}`
//! (WebSocket), one message per window, the latest window first.
//!
//! A client that reconnects says which window it saw last: the SSE `Last-Event-ID` header (the `id:`
//! of each event is its `window_start`, and browsers send it by themselves) or `?after=<window_start>`
//! (either transport). It then first gets every window after that one that its subscriber still holds,
//! then the live ones: no window twice, none missing.
//!
//! Both write the bytes framed once per window by the subscriber. A stream ends when the client
//! unsubscribes or moves, when it falls too far behind (dropped and counted), or at shutdown after
//! the last window is delivered.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::stages::registry::Slot;
use crate::stages::subscriber::{Frame, Hub};

use super::ApiError;
use super::api::ApiState;

/// A comment line keeps idle proxies from closing an SSE stream between windows.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Largest WebSocket message (and frame) a viewer may send. Viewers send nothing but control frames
/// (pings, pongs, a close) today; this leaves room for small messages and stops a fragmented message
/// that never ends from being buffered up to the library's default of 64 MiB.
pub const WS_MAX_MESSAGE: usize = 4 * 1024;

/// WebSocket read buffer, allocated per connection (the library's default is 128 KiB).
const WS_READ_BUFFER: usize = 4 * 1024;

/// Most bytes a WebSocket connection holds for a client that does not read: a few windows. Beyond
/// it a send fails and the connection ends; the library keeps at most one pending pong besides, so a
/// client that sends pings and never reads the pongs cannot grow the server (it did, by 100 MiB a
/// second, before this bound). The socket's `--write-timeout` ends it too.
const WS_MAX_WRITE_BUFFER: usize = 16 * 1024;

/// Longest a new stream waits for its subscriber to finish reading the windows it replays from.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// Counts a connection in its subscriber's gauge for as long as it lives.
struct ConnGuard(Arc<Hub>);

impl ConnGuard {
    fn new(hub: Arc<Hub>) -> Self {
        hub.connected.increment(1.0);
        Self(hub)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connected.decrement(1.0);
    }
}

/// One client's position in its subscriber's stream.
struct Conn {
    hub: Arc<Hub>,
    rx: tokio::sync::broadcast::Receiver<Arc<Frame>>,
    /// Windows sent before the live ones: the latest, or those after the client's last one.
    backlog: VecDeque<Arc<Frame>>,
    /// Last window sent: nothing at or before it is sent again.
    last: i64,
    client: CancellationToken,
    shutdown: CancellationToken,
    _guard: ConnGuard,
}

enum Next {
    Frame(Arc<Frame>),
    Keepalive,
    End(&'static str),
}

impl Conn {
    async fn next(&mut self) -> Next {
        while let Some(f) = self.backlog.pop_front() {
            if f.window_start > self.last {
                self.last = f.window_start;
                return Next::Frame(f);
            }
        }
        loop {
            tokio::select! {
                biased;
                r = self.rx.recv() => match r {
                    Ok(f) if f.window_start <= self.last => {}
                    Ok(f) => {
                        self.last = f.window_start;
                        return Next::Frame(f);
                    }
                    Err(RecvError::Lagged(n)) => {
                        self.hub.dropped.increment(1);
                        tracing::info!(subscriber = %format!("{}{}", self.hub.cluster, self.hub.id), behind = n, "dropping a client that stopped reading");
                        return Next::End("too slow");
                    }
                    Err(RecvError::Closed) => return Next::End("subscriber stopped"),
                },
                () = self.client.cancelled() => return Next::End("unsubscribed"),
                () = self.shutdown.cancelled() => return Next::End("server shutting down"),
                () = tokio::time::sleep(KEEPALIVE) => return Next::Keepalive,
            }
        }
    }
}

/// `?after=<window_start>`: the last window the client has.
#[derive(Debug, serde::Deserialize)]
pub struct StreamQuery {
    after: Option<String>,
}

/// The window after which to resume: `?after=` or else the `Last-Event-ID` header.
fn resume_after(query: &StreamQuery, headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let (name, value) = match (&query.after, headers.get("last-event-id")) {
        (Some(a), _) => ("query parameter `after`", a.as_str()),
        (None, Some(h)) => {
            ("header `Last-Event-ID`", h.to_str().map_err(|_| ApiError::bad_request("header `Last-Event-ID` must be a window_start"))?)
        }
        (None, None) => return Ok(None),
    };
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse::<i64>()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("{name} must be a window_start (ms since the epoch), got {value:?}")))
}

async fn open(state: &ApiState, client_id: &str, after: Option<i64>) -> Result<Conn, ApiError> {
    let here = |slot: Slot| state.hubs.contains_key(&(slot.cluster, slot.subscriber));
    let found = match state.registry.lookup(client_id) {
        Some(f) if here(f.0) || state.placement_wait.is_zero() => Some(f),
        _ => state.registry.wait_for(client_id, state.placement_wait, here).await,
    };
    let (slot, client) =
        found.ok_or_else(|| ApiError::not_found(format!("client {client_id:?} is not subscribed; POST /subscribe first")))?;
    let Some(hub) = state.hubs.get(&(slot.cluster, slot.subscriber)).cloned() else {
        return Err(misdirected(state, client_id, slot));
    };
    if !hub.is_caught_up() {
        let _ = tokio::time::timeout(CATCH_UP_WAIT, hub.caught_up()).await;
    }
    let (backlog, rx) = hub.attach(after);
    Ok(Conn {
        _guard: ConnGuard::new(hub.clone()),
        hub,
        rx,
        backlog: backlog.into(),
        last: after.unwrap_or(i64::MIN),
        client,
        shutdown: state.streams_shutdown.clone(),
    })
}

/// A client asking the wrong subscriber: 409, with where it should connect when that is known.
fn misdirected(state: &ApiState, client_id: &str, slot: Slot) -> ApiError {
    let e = ApiError::new(
        StatusCode::CONFLICT,
        format!("client {client_id:?} is on subscriber {} which this process does not serve", slot.key()),
    )
    .with_field("subscription_key", slot.key());
    match state.registry.url(slot) {
        Some(base) => {
            let (stream_url, ws_url) = super::api::urls(&base, client_id);
            let mut e = e.with_field("stream_url", stream_url).with_field("ws_url", ws_url);
            e.message.push_str("; connect to `stream_url` or `ws_url`");
            e
        }
        None => e,
    }
}

/// `GET /stream/{client_id}`: Server-Sent Events, one `swarm` event per window.
pub async fn sse(
    State(state): State<ApiState>,
    Path(client_id): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let conn = open(&state, &client_id, resume_after(&query, &headers)?).await?;
    let body = futures::stream::unfold(Some(conn), |conn| async move {
        let mut conn = conn?;
        match conn.next().await {
            Next::Frame(f) => {
                conn.hub.delivered.increment(1);
                Some((Ok::<Bytes, std::convert::Infallible>(f.sse.clone()), Some(conn)))
            }
            Next::Keepalive => Some((Ok(Bytes::from_static(b": keepalive\n\n")), Some(conn))),
            Next::End(_) => None,
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// `GET /ws/{client_id}`: WebSocket, one text frame per window.
pub async fn ws(
    State(state): State<ApiState>,
    Path(client_id): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let conn = open(&state, &client_id, resume_after(&query, &headers)?).await?;
    Ok(upgrade
        .read_buffer_size(WS_READ_BUFFER)
        // Each window is written and flushed at once: nothing to gain from gathering writes.
        .write_buffer_size(0)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
        .max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE)
        .on_upgrade(move |socket| ws_loop(socket, conn)))
}

async fn ws_loop(mut socket: WebSocket, mut conn: Conn) {
    loop {
        tokio::select! {
            next = conn.next() => match next {
                Next::Frame(f) => {
                    let text = match Utf8Bytes::try_from(f.json.clone()) {
                        Ok(t) => t,
                        Err(_) => continue, // swarm JSON is always UTF-8
                    };
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                    conn.hub.delivered.increment(1);
                }
                Next::Keepalive => {
                    if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                        return;
                    }
                }
                Next::End(reason) => {
                    let code = if reason == "server shutting down" { 1001 } else { 1000 };
                    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))).await;
                    return;
                }
            },
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {} // clients have nothing to say; pings are answered by the library
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::subscriber::QUEUE;

    fn frame(start: i64) -> Arc<Frame> {
        Arc::new(Frame::from_json(Bytes::from(format!(r#"{{"window_start":{start}}}"#))).unwrap())
    }

    fn conn(hub: &Arc<Hub>) -> Conn {
        conn_after(hub, None)
    }

    fn conn_after(hub: &Arc<Hub>, after: Option<i64>) -> Conn {
        let (backlog, rx) = hub.attach(after);
        Conn {
            _guard: ConnGuard::new(hub.clone()),
            hub: hub.clone(),
            rx,
            backlog: backlog.into(),
            last: after.unwrap_or(i64::MIN),
            client: CancellationToken::new(),
            shutdown: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped_and_others_are_not_delayed() {
        let hub = Hub::new(1, 1, 16);
        hub.publish(frame(0));
        let mut slow = conn(&hub);
        let mut fast = conn(&hub);
        assert!(matches!(slow.next().await, Next::Frame(f) if f.window_start == 0), "latest window first");
        assert!(matches!(fast.next().await, Next::Frame(f) if f.window_start == 0));
        for w in 1..=(QUEUE as i64 + 2) {
            hub.publish(frame(w * 1000));
            // The fast reader keeps up; publishing never waits for the slow one.
            assert!(matches!(fast.next().await, Next::Frame(f) if f.window_start == w * 1000));
        }
        assert!(matches!(slow.next().await, Next::End("too slow")));
    }

    #[tokio::test]
    async fn a_burst_of_windows_after_a_stall_upstream_drops_nobody() {
        let hub = Hub::new(1, 1, 16);
        let mut c = conn(&hub);
        // A stage upstream caught up after a broker restart: 30 windows at once, before any
        // connection ran.
        for w in 1..=30 {
            hub.publish(frame(w * 1000));
        }
        for w in 1..=30 {
            assert!(matches!(c.next().await, Next::Frame(f) if f.window_start == w * 1000), "window {w} of the burst");
        }
    }

    #[tokio::test]
    async fn a_window_is_never_sent_twice_to_a_connection() {
        let hub = Hub::new(1, 1, 16);
        hub.publish(frame(1000));
        let mut c = conn(&hub);
        hub.publish(frame(1000)); // a repeat (e.g. after a restart) is ignored by the hub
        hub.publish(frame(2000));
        assert!(matches!(c.next().await, Next::Frame(f) if f.window_start == 1000));
        assert!(matches!(c.next().await, Next::Frame(f) if f.window_start == 2000));
        c.client.cancel();
        assert!(matches!(c.next().await, Next::End("unsubscribed")));
    }

    #[tokio::test]
    async fn a_reconnecting_client_gets_what_it_missed_then_the_live_windows() {
        let hub = Hub::new(1, 1, 16);
        for w in 1..=5 {
            hub.publish(frame(w * 1000));
        }
        let mut c = conn_after(&hub, Some(3000));
        hub.publish(frame(6000));
        for want in [4000, 5000, 6000] {
            assert!(matches!(c.next().await, Next::Frame(f) if f.window_start == want), "window {want}");
        }
        // Up to date: nothing is replayed, the next live window comes.
        let mut d = conn_after(&hub, Some(6000));
        hub.publish(frame(7000));
        assert!(matches!(d.next().await, Next::Frame(f) if f.window_start == 7000));
    }

    #[test]
    fn resume_point_from_query_or_header() {
        let q = |a: Option<&str>| StreamQuery { after: a.map(String::from) };
        let mut h = HeaderMap::new();
        assert_eq!(resume_after(&q(None), &h), Ok(None));
        h.insert("last-event-id", "1700000000000".parse().unwrap());
        assert_eq!(resume_after(&q(None), &h), Ok(Some(1_700_000_000_000)));
        assert_eq!(resume_after(&q(Some("5")), &h), Ok(Some(5)), "the query wins");
        assert!(resume_after(&q(Some("soon")), &h).unwrap_err().message.contains("`after`"));
    }
}
