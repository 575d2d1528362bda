//! Test harness: runs the real `emostream` binary and talks to it over real sockets.
#![allow(dead_code)]

pub mod emotions;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use emostream::core::sse;
use futures::StreamExt;
use serde_json::Value;

/// A running `emostream up`, killed on drop.
pub struct Server {
    pub child: Child,
    pub ingest: String,
    pub api: String,
    pub stdout_rest: std::thread::JoinHandle<Vec<String>>,
}

impl Server {
    /// Starts `emostream up` on free ports with extra flags and waits until both APIs answer.
    pub async fn start(extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_emostream"));
        cmd.args(["up", "--ingest-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
            .args(extra)
            // Embedded: `scripts/test` exports EMOSTREAM_KAFKA for the Kafka tests, which would put
            // `up` on Kafka.
            .env_remove("EMOSTREAM_KAFKA")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn emostream");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut ingest, mut api) = (None, None);
        for line in lines.by_ref() {
            let line = line.expect("read stdout");
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("ingest"), Some(u)) => ingest = Some(u.to_string()),
                (Some("api"), Some(u)) => api = Some(u.to_string()),
                _ => {}
            }
            if ingest.is_some() && api.is_some() {
                break;
            }
        }
        let stdout_rest = std::thread::spawn(move || lines.map_while(Result::ok).collect());
        let s = Server { child, ingest: ingest.expect("ingest address printed"), api: api.expect("api address printed"), stdout_rest };
        for _ in 0..100 {
            if reqwest::get(format!("{}/healthz", s.api)).await.is_ok_and(|r| r.status().is_success()) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not answer /healthz");
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        for _ in 0..300 {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not exit within 15 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).json(body).send().await.expect("post");
    let status = r.status().as_u16();
    let v = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, v)
}

pub async fn post_raw(url: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).header("content-type", content_type).body(body).send().await.expect("post");
    let status = r.status().as_u16();
    let v = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, v)
}

pub async fn subscribe(api: &str, body: Value) -> Value {
    let (status, v) = post_json(&format!("{api}/subscribe"), &body).await;
    assert_eq!(status, 200, "subscribe {body}: {v}");
    v
}

/// Collects every swarm message of an SSE stream until it ends.
pub fn sse_client(url: String) -> (tokio::sync::watch::Receiver<usize>, tokio::task::JoinHandle<Vec<Value>>) {
    let (tx, rx) = tokio::sync::watch::channel(0usize);
    let h = tokio::spawn(async move {
        let resp = reqwest::get(&url).await.expect("open stream");
        assert_eq!(resp.status(), 200, "stream {url}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.bytes_stream();
        let mut splitter = sse::Splitter::default();
        let mut out = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            splitter.push(&chunk, |event| {
                let text = std::str::from_utf8(event).expect("utf-8 event");
                if text.starts_with(':') {
                    return;
                }
                assert!(text.starts_with("event: swarm\n"), "{text}");
                let (_, data) = sse::fields(event);
                out.push(serde_json::from_slice(&data.expect("data")).expect("swarm json"));
                tx.send_replace(out.len());
            });
        }
        out
    });
    (rx, h)
}

/// Collects every swarm message of a WebSocket until it closes.
pub fn ws_client(url: String) -> (tokio::sync::watch::Receiver<usize>, tokio::task::JoinHandle<Vec<Value>>) {
    use tokio_tungstenite::tungstenite::Message;
    let (tx, rx) = tokio::sync::watch::channel(0usize);
    let h = tokio::spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("ws connect");
        let mut out = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) => {
                    out.push(serde_json::from_str(&t).expect("swarm json"));
                    tx.send_replace(out.len());
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        out
    });
    (rx, h)
}

/// Waits until a client has received at least `n` windows.
pub async fn wait_for(rx: &mut tokio::sync::watch::Receiver<usize>, n: usize) {
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|v| *v >= n)).await.expect("windows arrive").expect("client alive");
}

/// Sum of `counts` per emoji over windows.
pub fn totals(windows: &[Value]) -> std::collections::BTreeMap<String, u64> {
    let mut t = std::collections::BTreeMap::new();
    for w in windows {
        for (e, n) in w["counts"].as_object().expect("counts") {
            *t.entry(e.clone()).or_default() += n.as_u64().unwrap();
        }
        let sum: u64 = w["counts"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(w["total"].as_u64().unwrap(), sum, "total equals the sum of counts");
    }
    t
}

/// Asserts windows are consecutive (no gap, no repeat) for a window size.
pub fn assert_consecutive(windows: &[Value], size_ms: i64, who: &str) {
    for pair in windows.windows(2) {
        let (a, b) = (pair[0]["window_start"].as_i64().unwrap(), pair[1]["window_start"].as_i64().unwrap());
        assert_eq!(b - a, size_ms, "{who}: windows {a} then {b} (gap or repeat)");
    }
    for w in windows {
        assert_eq!(w["window_end"].as_i64().unwrap() - w["window_start"].as_i64().unwrap(), size_ms);
    }
}

/// Opens an SSE stream (optionally resuming with `Last-Event-ID`), reads `n` windows and hangs up.
/// Checks that each event's `id:` is its `window_start`.
pub async fn sse_take(url: &str, last_event_id: Option<i64>, n: usize) -> Vec<Value> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let resp = req.send().await.expect("open stream");
    assert_eq!(resp.status(), 200, "stream {url}");
    let mut body = resp.bytes_stream();
    let mut splitter = sse::Splitter::default();
    let mut out = Vec::new();
    let read = async {
        while out.len() < n {
            let chunk = body.next().await.expect("stream open").expect("stream chunk");
            splitter.push(&chunk, |event| {
                let text = std::str::from_utf8(event).expect("utf-8 event");
                if text.starts_with(':') {
                    return;
                }
                let (id, data) = sse::fields(event);
                let id: i64 = std::str::from_utf8(id.expect("event id")).unwrap().parse().expect("numeric id");
                let w: Value = serde_json::from_slice(&data.expect("data")).expect("swarm json");
                assert_eq!(w["window_start"].as_i64(), Some(id), "the SSE id is the window_start");
                out.push(w);
            });
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("windows arrive");
    out.truncate(n);
    out
}

/// Opens a WebSocket, reads `n` windows and closes it.
pub async fn ws_take(url: &str, n: usize) -> Vec<Value> {
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws connect");
    let mut out = Vec::new();
    let read = async {
        while out.len() < n {
            match ws.next().await.expect("ws open").expect("ws message") {
                Message::Text(t) => out.push(serde_json::from_str(&t).expect("swarm json")),
                Message::Close(c) => panic!("closed early: {c:?}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("windows arrive");
    let _ = ws.close(None).await;
    out
}
