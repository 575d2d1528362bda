//! Viewers: each holds one stream (SSE over a bare hyper HTTP/1 connection, or a WebSocket) and
//! records every window it receives. A viewer is one task and one socket, so 10 000 fit in a process.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::verify::{Received, ViewerLog};

/// First sight of a window, shared by all viewers.
#[derive(Debug, Clone)]
pub struct WindowSeen {
    pub counts: BTreeMap<String, u64>,
    pub closed_at: i64,
    /// Earliest receipt by any viewer, µs since the epoch.
    pub first_recv_us: i64,
    /// Viewers that received it.
    pub receipts: usize,
}

/// What viewers share: live counters and each window's first receipt.
#[derive(Debug, Default)]
pub struct Shared {
    pub connected: AtomicUsize,
    pub failed: AtomicUsize,
    pub received: AtomicU64,
    /// Latest window start any viewer received.
    pub latest: std::sync::atomic::AtomicI64,
    /// Window size seen in messages (end − start).
    pub size_ms: std::sync::atomic::AtomicI64,
    /// `std::sync::Mutex`: held for a map lookup, never across an await.
    pub windows: Mutex<BTreeMap<i64, WindowSeen>>,
}

/// Where one viewer connects.
#[derive(Debug, Clone)]
pub struct ViewerSpec {
    pub id: String,
    /// `http://host:port/stream/id` or `ws://host:port/ws/id`.
    pub url: String,
    pub ws: bool,
}

#[derive(Deserialize)]
struct Head {
    window_start: i64,
    window_end: i64,
    #[serde(default)]
    closed_at: i64,
}

#[derive(Deserialize)]
struct Full {
    #[serde(default)]
    counts: BTreeMap<String, u64>,
}

/// Microseconds since the epoch.
pub fn now_us() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Records one swarm message.
fn on_message(json: &[u8], log: &mut ViewerLog, shared: &Shared) {
    let recv_us = now_us();
    let Ok(head) = serde_json::from_slice::<Head>(json) else {
        log.ended.get_or_insert_with(|| format!("not a swarm message: {}", String::from_utf8_lossy(&json[..json.len().min(80)])));
        return;
    };
    log.windows.push(Received { start: head.window_start, end: head.window_end, closed_at: head.closed_at, recv_us, hash: hash(json) });
    shared.received.fetch_add(1, Ordering::Relaxed);
    shared.latest.fetch_max(head.window_start, Ordering::Relaxed);
    shared.size_ms.store(head.window_end - head.window_start, Ordering::Relaxed);
    let mut windows = shared.windows.lock().expect("viewer map poisoned");
    match windows.get_mut(&head.window_start) {
        Some(w) => {
            w.first_recv_us = w.first_recv_us.min(recv_us);
            w.receipts += 1;
        }
        None => {
            let counts = serde_json::from_slice::<Full>(json).map(|f| f.counts).unwrap_or_default();
            windows.insert(head.window_start, WindowSeen { counts, closed_at: head.closed_at, first_recv_us: recv_us, receipts: 1 });
        }
    }
}

/// Splits `scheme://authority/path` into (authority, path).
pub fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.split_once("://")?.1;
    match rest.find('/') {
        Some(i) => Some((&rest[..i], &rest[i..])),
        None => Some((rest, "/")),
    }
}

/// Runs one viewer until `stop`; the permit is held only while connecting.
pub async fn run(spec: ViewerSpec, shared: Arc<Shared>, connecting: Arc<Semaphore>, stop: CancellationToken) -> ViewerLog {
    let mut log = ViewerLog { id: spec.id.clone(), ..ViewerLog::default() };
    let permit = connecting.acquire_owned().await.ok();
    let r = if spec.ws { ws(&spec, &mut log, &shared, permit, &stop).await } else { sse(&spec, &mut log, &shared, permit, &stop).await };
    if let Err(e) = r {
        log.ended.get_or_insert(e);
    }
    log
}

fn connect_failed(shared: &Shared, e: impl std::fmt::Display) -> String {
    shared.failed.fetch_add(1, Ordering::Relaxed);
    format!("cannot connect: {e}")
}

async fn sse(
    spec: &ViewerSpec,
    log: &mut ViewerLog,
    shared: &Shared,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let (authority, path) = split_url(&spec.url).ok_or_else(|| connect_failed(shared, format!("bad URL {}", spec.url)))?;
    let stream = TcpStream::connect(authority).await.map_err(|e| connect_failed(shared, e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| connect_failed(shared, e))?;
    let conn_task = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|e| connect_failed(shared, e))?;
    let resp = sender.send_request(req).await.map_err(|e| connect_failed(shared, e))?;
    if !resp.status().is_success() {
        return Err(connect_failed(shared, format!("stream answered {}", resp.status())));
    }
    shared.connected.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    let mut body = resp.into_body();
    let mut splitter = crate::core::sse::Splitter::default();
    let result = loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            () = stop.cancelled() => break Ok(()),
        };
        let data = match frame {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Some(Err(e)) => break Err(format!("stream failed: {e}")),
            None => break Err("the server ended the stream".to_string()),
        };
        splitter.push(&data, |event| on_event(event, log, shared));
    };
    shared.connected.fetch_sub(1, Ordering::Relaxed);
    conn_task.abort();
    result
}

/// One SSE event: comment lines are keepalives; `data:` lines are the message.
fn on_event(event: &[u8], log: &mut ViewerLog, shared: &Shared) {
    if let (_, Some(data)) = crate::core::sse::fields(event) {
        on_message(&data, log, shared);
    }
}

async fn ws(
    spec: &ViewerSpec,
    log: &mut ViewerLog,
    shared: &Shared,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    stop: &CancellationToken,
) -> Result<(), String> {
    use tokio_tungstenite::tungstenite::Message;
    let (authority, _) = split_url(&spec.url).ok_or_else(|| connect_failed(shared, format!("bad URL {}", spec.url)))?;
    let stream = TcpStream::connect(authority).await.map_err(|e| connect_failed(shared, e))?;
    let _ = stream.set_nodelay(true);
    let (mut socket, _) = tokio_tungstenite::client_async(spec.url.as_str(), stream).await.map_err(|e| connect_failed(shared, e))?;
    shared.connected.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    let result = loop {
        let msg = tokio::select! {
            m = socket.next() => m,
            () = stop.cancelled() => {
                let _ = socket.close(None).await;
                break Ok(());
            }
        };
        match msg {
            Some(Ok(Message::Text(t))) => on_message(t.as_bytes(), log, shared),
            Some(Ok(Message::Binary(b))) => on_message(b.chunk(), log, shared),
            Some(Ok(Message::Close(c))) => {
                break Err(format!("the server closed the WebSocket: {}", c.map(|c| c.reason.to_string()).unwrap_or_default()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break Err(format!("WebSocket failed: {e}")),
            None => break Err("the WebSocket ended".to_string()),
        }
    };
    shared.connected.fetch_sub(1, Ordering::Relaxed);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(split_url("http://127.0.0.1:5002/stream/a%20b"), Some(("127.0.0.1:5002", "/stream/a%20b")));
        assert_eq!(split_url("ws://h:1"), Some(("h:1", "/")));
    }

    #[test]
    fn sse_events_are_parsed_and_recorded_once_per_window() {
        let shared = Shared::default();
        let mut log = ViewerLog::default();
        let msg = br#"{"window_start":0,"window_end":1000,"total":2,"counts":{"x":2},"closed_at":1000}"#;
        let mut ev = b"event: swarm\nid: 0\ndata: ".to_vec();
        ev.extend_from_slice(msg);
        ev.extend_from_slice(b"\n\n");
        on_event(&ev, &mut log, &shared);
        on_event(b": keepalive\n\n", &mut log, &shared);
        assert_eq!(log.windows.len(), 1);
        assert_eq!(log.windows[0].hash, hash(msg), "the hash is over the JSON, as a WebSocket frame carries it");
        assert_eq!(shared.windows.lock().unwrap()[&0].counts["x"], 2);
    }
}
