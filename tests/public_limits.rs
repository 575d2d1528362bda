//! What one unauthenticated client can make `emostream up` hold (issue 11, point 7), against the
//! real binary over real sockets: each attack runs from 30 connections, and the server's RSS (from
//! /proc, after a warm-up round of the same attack) must grow by less than 64 KiB per attacking
//! connection while other clients keep being served. Also: the timeouts and limits answer in JSON,
//! every 4xx has the `{"error": ...}` shape, and the dashboard sends its security headers.
//!
//! Deadlines are generous (the machine may be busy): nothing is asserted tighter than the timeouts
//! the server is given.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Attacking connections per attack.
const ATTACKERS: usize = 30;

/// Most RSS growth allowed per attacking connection, KiB.
const PER_CONNECTION_KIB: u64 = 64;

fn addr(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://").parse().expect("host:port")
}

fn rss(server: &Server) -> u64 {
    emostream::sys::rss_kib(server.child.id()).expect("server RSS")
}

/// A connection with a small receive buffer, as a client that never reads would have.
async fn connect_small(url: &str) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(addr(url)).await.expect("connect")
}

/// Reads an HTTP answer head (and whatever body came with it) until the server closes or `limit`.
async fn read_answer(s: &mut TcpStream, limit: Duration) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)));
                if len.is_some_and(|n| body.len() >= n) {
                    break;
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn json_body_of(answer: &str) -> Value {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "not JSON: {answer}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// Opens `/ws/{client_id}` by hand (so frames can be sent that no library sends).
async fn ws_raw(api: &str, client_id: &str) -> TcpStream {
    let mut s = connect_small(api).await;
    let req = format!(
        "GET /ws/{client_id} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.expect("handshake"), 1, "closed during the handshake");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// A masked client frame.
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Someone else is still served: the APIs answer and an emoji is taken.
async fn others_are_served(server: &Server) {
    let r = reqwest::Client::new().get(format!("{}/healthz", server.api)).timeout(Duration::from_secs(15)).send().await;
    assert!(r.is_ok_and(|r| r.status() == 200), "the API stopped answering");
    let (status, v) = post_json(&format!("{}/emoji", server.ingest), &json!({"emoji": "😀", "client_id": "bystander"})).await;
    assert_eq!(status, 200, "{v}");
}

/// Runs `attack` from `n` connections for `hold`, sampling the server's RSS; returns (before, peak).
/// A warm-up round of the same attack from a few connections goes first, so the allocator's own
/// growth (arenas, the runtime's buffers) is not charged to the attackers.
async fn measure<F, Fut>(server: &Server, n: usize, hold: Duration, attack: F) -> (u64, u64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let warm: Vec<_> = (0..5).map(|i| tokio::spawn(attack(1000 + i))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for h in warm {
        h.abort();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss(server);
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(attack(i))).collect();
    let mut peak = before;
    let start = Instant::now();
    while start.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(rss(server));
    }
    others_are_served(server).await;
    peak = peak.max(rss(server));
    for t in tasks {
        t.abort();
    }
    (before, peak)
}

fn assert_bounded(what: &str, n: usize, (before, peak): (u64, u64)) {
    let growth = peak.saturating_sub(before);
    eprintln!("{what}: {n} attackers, RSS {before} KiB -> peak {peak} KiB (+{} KiB per connection)", growth / n as u64);
    assert!(
        growth < PER_CONNECTION_KIB * n as u64,
        "{what}: RSS grew by {growth} KiB for {n} connections ({before} -> {peak} KiB), over {PER_CONNECTION_KIB} KiB each"
    );
}

async fn subscribed(server: &Server, n: usize, prefix: &str) {
    for i in (0..n).chain(1000..1005) {
        subscribe(&server.api, json!({"client_id": format!("{prefix}{i}")})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_pings_never_read_are_bounded_and_the_viewer_is_dropped() {
    let server = Server::start(&["--write-timeout", "1s"]).await;
    subscribed(&server, ATTACKERS, "ping").await;
    let api = server.api.clone();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let attack = move |i: usize| {
        let (api, closed) = (api.clone(), closed_tx.clone());
        async move {
            let mut s = ws_raw(&api, &format!("ping{i}")).await;
            let pings: Vec<u8> = (0..64).flat_map(|_| frame(0x9, true, &[b'p'; 125])).collect();
            // Never reads: the pongs (and windows) pile up on the server's side.
            while s.write_all(&pings).await.is_ok() {}
            let _ = closed.send(i);
        }
    };
    let measured = measure(&server, ATTACKERS, Duration::from_secs(8), attack.clone()).await;
    assert_bounded("WebSocket pings never read", ATTACKERS, measured);

    // A viewer whose socket accepts nothing is dropped: the server stops reading once its own
    // writes block, then closes after --write-timeout, and the attacker's writes fail.
    for i in 2000..2005 {
        subscribe(&server.api, json!({"client_id": format!("ping{i}")})).await;
    }
    for i in 2000..2005 {
        tokio::spawn(attack(i));
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut dropped = std::collections::BTreeSet::new();
    while dropped.len() < 5 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), closed_rx.recv()).await {
            Ok(Some(i)) if i >= 2000 => {
                dropped.insert(i);
            }
            _ => {}
        }
    }
    assert_eq!(dropped.len(), 5, "viewers that never read were not all dropped: {dropped:?}");
    others_are_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_ws_message_that_never_ends_is_bounded_and_refused() {
    let server = Server::start(&[]).await;
    subscribed(&server, ATTACKERS, "frag").await;
    let api = server.api.clone();
    let attack = move |i: usize| {
        let api = api.clone();
        async move {
            let mut s = ws_raw(&api, &format!("frag{i}")).await;
            let _ = s.write_all(&frame(0x1, false, &[b'a'; 1024])).await;
            let more = frame(0x0, false, &[b'a'; 1024]);
            while s.write_all(&more).await.is_ok() {}
        }
    };
    let measured = measure(&server, ATTACKERS, Duration::from_secs(6), attack).await;
    assert_bounded("fragmented WebSocket message", ATTACKERS, measured);

    // The server closes such a connection (message over its limit): reads end.
    let mut s = ws_raw(&server.api, "frag0").await;
    let mut body = frame(0x1, false, &[b'a'; 1024]);
    for _ in 0..16 {
        body.extend(frame(0x0, false, &[b'a'; 1024]));
    }
    let _ = s.write_all(&body).await;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "an over-long message did not end the connection");
}

/// `POST /emojis` declaring a 4 MiB body, sending its first KiB, then nothing.
async fn stall(ingest: &str) -> String {
    let mut s = TcpStream::connect(addr(ingest)).await.expect("connect");
    let head = "POST /emojis HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4194304\r\n\r\n[";
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b' '; 1023]).await.unwrap();
    read_answer(&mut s, Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_bounded_and_answered_408_json() {
    let server = Server::start(&["--body-timeout", "2s"]).await;
    let ingest = server.ingest.clone();
    let attack = move |_| {
        let ingest = ingest.clone();
        async move {
            let _ = stall(&ingest).await;
        }
    };
    let measured = measure(&server, ATTACKERS, Duration::from_millis(1500), attack).await;
    assert_bounded("stalled request bodies", ATTACKERS, measured);

    // Each gets 408 with the JSON shape, well within the deadline.
    let started = Instant::now();
    let answers = futures::future::join_all((0..ATTACKERS).map(|_| stall(&server.ingest))).await;
    assert!(started.elapsed() < Duration::from_secs(30), "408s took {:?}", started.elapsed());
    for a in &answers {
        assert_eq!(status_of(a), 408, "{a}");
        assert!(json_body_of(a)["error"].as_str().unwrap().contains("--body-timeout"), "{a}");
    }
    // The API's JSON extractor too.
    let mut s = TcpStream::connect(addr(&server.api)).await.unwrap();
    s.write_all(b"POST /subscribe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{").await.unwrap();
    let a = read_answer(&mut s, Duration::from_secs(15)).await;
    assert_eq!(status_of(&a), 408, "{a}");
    assert!(json_body_of(&a)["error"].is_string());
    others_are_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_oversize_body_gets_413_json_at_once() {
    // A body timeout far longer than the deadline below: the 413 cannot be the timeout's doing.
    let server = Server::start(&["--body-timeout", "60s"]).await;
    for (url, path) in [(&server.ingest, "/emojis"), (&server.ingest, "/emoji"), (&server.api, "/subscribe")] {
        let mut s = TcpStream::connect(addr(url)).await.unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n[");
        s.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let a = read_answer(&mut s, Duration::from_secs(20)).await;
        assert_eq!(status_of(&a), 413, "{path}: {a}");
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(json_body_of(&a)["error"].as_str().unwrap().contains("size limit"), "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_get_503_json_until_some_close() {
    let server = Server::start(&["--max-connections", "20"]).await;
    // Twenty idle connections hold the API's limit (the harness's own are closed by now, or soon).
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(addr(&server.api)).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let mut s = TcpStream::connect(addr(&server.api)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let a = read_answer(&mut s, Duration::from_secs(10)).await;
        if status_of(&a) == 503 || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status_of(&refused), 503, "{refused}");
    assert!(refused.to_ascii_lowercase().contains("retry-after:"), "{refused}");
    assert!(json_body_of(&refused)["error"].as_str().unwrap().contains("--max-connections"), "{refused}");
    // The ingest listener has its own limit: not reached.
    others_are_served_ingest(&server).await;
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = reqwest::Client::new().get(format!("{}/healthz", server.api)).timeout(Duration::from_secs(5)).send().await;
        if r.as_ref().is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the API did not serve again once the connections closed: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn others_are_served_ingest(server: &Server) {
    let (status, v) = post_json(&format!("{}/emoji", server.ingest), &json!({"emoji": "😀", "client_id": "bystander"})).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_4xx_has_the_json_error_shape() {
    let server = Server::start(&[]).await;
    subscribe(&server.api, json!({"client_id": "c1"})).await;
    let raw = |url: String, req: String| async move {
        let mut s = TcpStream::connect(addr(&url)).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        read_answer(&mut s, Duration::from_secs(15)).await
    };
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let cases = [
        ("a bad query string", get("/stream/c1?after=1&after=2"), 400),
        ("invalid UTF-8 in a path", get("/stream/%FF%FE"), 400),
        ("/ws/ without an upgrade", get("/ws/c1"), 400),
        ("an unknown path", get("/nope"), 404),
        ("a wrong method", "DELETE /subscribe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(), 405),
        (
            "a body over the API's limit",
            format!(
                "POST /subscribe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20000\r\nConnection: close\r\n\r\n{}",
                " ".repeat(20000)
            ),
            413,
        ),
    ];
    for (what, req, want) in cases {
        let a = raw(server.api.clone(), req).await;
        assert_eq!(status_of(&a), want, "{what}: {a}");
        assert!(json_body_of(&a)["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {a}");
    }
    let a = raw(server.ingest.clone(), get("/emoji?x=%FF")).await;
    assert_eq!(status_of(&a), 405, "{a}");
    assert!(json_body_of(&a)["error"].is_string(), "{a}");
    // Hyper answers a head over its buffer itself, with an empty body (no hook for it): the status
    // at least is right.
    let a = raw(server.api.clone(), format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024))).await;
    assert_eq!(status_of(&a), 431, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_sends_its_security_headers() {
    let server = Server::start(&[]).await;
    for path in ["/", "/app.js", "/style.css"] {
        let r = reqwest::get(format!("{}{path}", server.api)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        let csp = h.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp:?}");
        assert_eq!(h.get("x-frame-options").map(|v| v.as_bytes()), Some(&b"DENY"[..]), "{path}");
        assert_eq!(h.get("x-content-type-options").map(|v| v.as_bytes()), Some(&b"nosniff"[..]), "{path}");
    }
}
