//! Harness for the distributed tests: every stage as its own `emostream` OS process over the real
//! Kafka broker `scripts/test` starts (address in `EMOSTREAM_TEST_KAFKA`), viewers that reconnect
//! like `emostream client` does, and senders that count what was acknowledged.

#![allow(dead_code)]

#[path = "../common/emotions.rs"]
pub mod emotions;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

pub fn brokers() -> String {
    std::env::var("EMOSTREAM_TEST_KAFKA").expect(
        "EMOSTREAM_TEST_KAFKA is not set: run the tests with scripts/test (it starts Kafka), or start one with \
         `KAFKA_PORT=19092 scripts/kafka start` and set EMOSTREAM_TEST_KAFKA=127.0.0.1:19092",
    )
}

/// A port that is free now, below the kernel's ephemeral range (32768 and up here): a port taken
/// from that range (bind to :0, then release) can be handed to one of the many outgoing Kafka
/// connections before the process that is meant to listen on it starts.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64
        ^ (u64::from(std::process::id()) << 16);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port =
            20_000 + ((seed.wrapping_mul(6364136223846793005).wrapping_add(n.wrapping_mul(1442695040888963407)) >> 33) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One `emostream` process; killed when dropped.
pub struct Proc {
    pub name: String,
    args: Vec<String>,
    child: Option<Child>,
    pub log: PathBuf,
    restarts: u32,
}

impl Proc {
    pub fn spawn(name: &str, args: &[String], dir: &std::path::Path) -> Proc {
        let mut p = Proc { name: name.to_owned(), args: args.to_vec(), child: None, log: dir.join(format!("{name}.log")), restarts: 0 };
        p.start();
        p
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_emostream"));
        cmd.args(&self.args).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("EMOSTREAM_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info,librdkafka=warn").env("NO_COLOR", "1");
        // EMOSTREAM_TEST_KAFKA_DEBUG=cgrp,eos: librdkafka's debug log in every stage's log.
        if let Ok(contexts) = std::env::var("EMOSTREAM_TEST_KAFKA_DEBUG") {
            cmd.env("EMOSTREAM_KAFKA_DEBUG", contexts).env("RUST_LOG", "info,librdkafka=debug");
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", self.name)));
    }

    /// `kill -9`: no chance to flush or commit anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "{} did not exit within 30 s of SIGTERM; log {}", self.name, self.log.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.restarts += 1;
        self.start();
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Panics (with its log) when the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Some(s) = c.try_wait().unwrap() {
                panic!("{} exited ({s}); log:\n{}", self.name, tail(&self.log));
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn tail(path: &std::path::Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A whole distributed topology, one process per stage.
pub struct Topology {
    /// Flags every process of this topology takes (broker, namespace, partitions).
    common: Vec<String>,
    pub namespace: String,
    pub dir: PathBuf,
    pub window_ms: i64,
    pub registry_url: String,
    pub ingest_urls: Vec<String>,
    /// `--metrics-addr` of the stages without an API: cluster-N, publish and aggregate-N.
    pub metrics_urls: BTreeMap<String, String>,
    pub procs: BTreeMap<String, Proc>,
}

pub struct Shape {
    pub ingest: usize,
    pub aggregate: usize,
    pub clusters: u32,
    pub subscribers: u32,
    pub partitions: u32,
    pub window: &'static str,
    pub ack: &'static str,
}

impl Topology {
    pub async fn start(test: &str, shape: Shape) -> Topology {
        Self::start_on(test, shape, &brokers(), 1).await
    }

    /// A topology over the Kafka at `kafka` whose processes create their topics with `replication`.
    pub async fn start_on(test: &str, shape: Shape, kafka: &str, replication: u16) -> Topology {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let namespace = format!("{test}-{}-{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(format!("emostream-{namespace}"));
        std::fs::create_dir_all(&dir).unwrap();
        let window_ms = humantime::parse_duration(shape.window).unwrap().as_millis() as i64;
        let common = |v: &mut Vec<String>| {
            v.extend([
                "--kafka".into(),
                kafka.to_owned(),
                "--namespace".into(),
                namespace.clone(),
                "--partitions".into(),
                shape.partitions.to_string(),
                "--replication".into(),
                replication.to_string(),
            ]);
        };
        let mut procs = BTreeMap::new();
        let mut metrics_urls = BTreeMap::new();
        let mut add = |name: String, mut args: Vec<String>| {
            common(&mut args);
            let p = Proc::spawn(&name, &args, &dir);
            procs.insert(name, p);
        };
        let s = |x: &str| x.to_owned();
        let registry_port = free_port();
        add(
            s("registry"),
            vec![
                s("registry"),
                s("--api-addr"),
                format!("127.0.0.1:{registry_port}"),
                s("--clusters"),
                shape.clusters.to_string(),
                s("--subscribers"),
                shape.subscribers.to_string(),
            ],
        );
        for c in 1..=shape.clusters {
            for m in 1..=shape.subscribers {
                add(
                    format!("subscriber-{c}.{m}"),
                    vec![
                        s("subscriber"),
                        s("--cluster"),
                        c.to_string(),
                        s("--id"),
                        m.to_string(),
                        s("--api-addr"),
                        format!("127.0.0.1:{}", free_port()),
                    ],
                );
            }
            let port = free_port();
            metrics_urls.insert(format!("cluster-{c}"), format!("http://127.0.0.1:{port}"));
            add(format!("cluster-{c}"), vec![s("cluster"), s("--id"), c.to_string(), s("--metrics-addr"), format!("127.0.0.1:{port}")]);
        }
        let port = free_port();
        metrics_urls.insert(s("publish"), format!("http://127.0.0.1:{port}"));
        add(s("publish"), vec![s("publish"), s("--window"), s(shape.window), s("--metrics-addr"), format!("127.0.0.1:{port}")]);
        for a in 1..=shape.aggregate {
            let port = free_port();
            metrics_urls.insert(format!("aggregate-{a}"), format!("http://127.0.0.1:{port}"));
            add(
                format!("aggregate-{a}"),
                [s("aggregate")]
                    .into_iter()
                    // EMOSTREAM_TEST_DYNAMIC_AGGREGATES=1: without --id, the baseline of the recovery figure.
                    .chain(
                        (std::env::var_os("EMOSTREAM_TEST_DYNAMIC_AGGREGATES").is_none())
                            .then(|| [s("--id"), a.to_string()])
                            .into_iter()
                            .flatten(),
                    )
                    .chain([s("--window"), s(shape.window), s("--grace"), s("200ms"), s("--metrics-addr"), format!("127.0.0.1:{port}")])
                    .collect(),
            );
        }
        let mut ingest_urls = Vec::new();
        for i in 1..=shape.ingest {
            let port = free_port();
            ingest_urls.push(format!("http://127.0.0.1:{port}"));
            add(
                format!("ingest-{i}"),
                vec![s("ingest"), s("--ingest-addr"), format!("127.0.0.1:{port}"), s("--ack"), s(shape.ack), s("--linger"), s("5ms")],
            );
        }
        let mut common_args = Vec::new();
        common(&mut common_args);
        let mut t = Topology {
            common: common_args,
            namespace,
            dir,
            window_ms,
            registry_url: format!("http://127.0.0.1:{registry_port}"),
            ingest_urls,
            metrics_urls,
            procs,
        };
        let mut urls = vec![t.registry_url.clone()];
        urls.extend(t.ingest_urls.iter().cloned());
        for u in urls {
            t.wait_healthy(&u).await;
        }
        t
    }

    /// Starts one more process of this topology (e.g. another aggregator joining the group).
    pub fn spawn(&mut self, name: &str, args: &[&str]) {
        let mut a: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        a.extend(self.common.iter().cloned());
        let p = Proc::spawn(name, &a, &self.dir);
        self.procs.insert(name.to_owned(), p);
    }

    pub fn proc(&mut self, name: &str) -> &mut Proc {
        self.procs.get_mut(name).unwrap_or_else(|| panic!("no process {name}"))
    }

    pub fn assert_all_running(&mut self) {
        for p in self.procs.values_mut() {
            p.assert_running();
        }
    }

    pub async fn wait_healthy(&mut self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/healthz")).await {
                if r.status().is_success() {
                    return;
                }
            }
            self.assert_all_running();
            assert!(Instant::now() < deadline, "{url} not healthy within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Subscribes `client_id` at the registry; returns the answer (with `stream_url`, `ws_url`).
    pub async fn subscribe(&self, body: Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = reqwest::Client::new().post(format!("{}/subscribe", self.registry_url)).json(&body).send().await.unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            if status == 200 {
                return v;
            }
            // Subscribers announce themselves shortly after start.
            assert!(Instant::now() < deadline, "subscribe {body}: {status} {v}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The pipeline counters of every stage that serves metrics (partials emitted, windows published
    /// and forwarded, ingest queue depth), for a failing test's output: they say which stage stalled.
    pub async fn counters(&self) -> String {
        let mut out = String::new();
        for (name, url) in &self.metrics_urls {
            let text = match reqwest::get(format!("{url}/metrics")).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => format!("unreachable: {e}"),
            };
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && (l.contains("partials_emitted") || l.contains("windows_") || l.contains("unreachable")))
                .collect();
            out.push_str(&format!("{name}: {}\n", lines.join("; ")));
        }
        out
    }

    /// With `EMOSTREAM_TEST_STACKS=1`: every running process's threads, as gdb sees them, into
    /// `<name>.stacks` beside its log, so that a stage that stopped making progress without an error
    /// shows where it waits. Opt-in: gdb takes tens of seconds per debug binary on a busy machine.
    pub fn dump_stacks(&mut self) {
        if std::env::var_os("EMOSTREAM_TEST_STACKS").is_none() {
            return;
        }
        let mut gdbs = Vec::new();
        for p in self.procs.values_mut() {
            let Some(pid) = p.child.as_ref().map(Child::id) else { continue };
            if p.exited().is_some() {
                continue;
            }
            let Ok(file) = std::fs::File::create(self.dir.join(format!("{}.stacks", p.name))) else { continue };
            let gdb = Command::new("gdb")
                .args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt"])
                .stdin(Stdio::null())
                .stdout(file)
                .stderr(Stdio::null())
                .spawn();
            gdbs.extend(gdb);
        }
        for mut g in gdbs {
            let _ = g.wait();
        }
    }

    /// Every process's log, for a failing test's output.
    pub fn logs(&self) -> String {
        self.procs.values().map(|p| format!("---- {} ----\n{}\n", p.name, tail(&p.log))).collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_stacks();
            eprintln!("process logs in {}:\n{}", self.dir.display(), self.logs());
        }
    }
}

/// What a viewer received, in arrival order, across reconnects.
#[derive(Default)]
pub struct Seen {
    pub windows: Vec<Value>,
    pub reconnects: u32,
}

/// A viewer that holds an SSE stream (or WebSocket) and, when it drops, reconnects with the last
/// window it saw, as `emostream client` and browsers do.
pub struct Viewer {
    pub id: String,
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Viewer {
    pub fn sse(id: &str, url: String) -> Viewer {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let last = s.lock().unwrap().windows.last().and_then(|w| w["window_start"].as_i64());
                let mut req = client.get(&url);
                if let Some(l) = last {
                    req = req.header("Last-Event-ID", l.to_string());
                }
                if let Ok(resp) = req.send().await {
                    if resp.status() == 200 {
                        let mut body = resp.bytes_stream();
                        let mut splitter = emostream::core::sse::Splitter::default();
                        while let Some(Ok(chunk)) = body.next().await {
                            splitter.push(&chunk, |event| {
                                if let (_, Some(data)) = emostream::core::sse::fields(event) {
                                    if let Ok(w) = serde_json::from_slice::<Value>(&data) {
                                        s.lock().unwrap().windows.push(w);
                                    }
                                }
                            });
                        }
                    }
                }
                s.lock().unwrap().reconnects += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Viewer { id: id.to_owned(), seen, task }
    }

    pub fn ws(id: &str, url: String) -> Viewer {
        use tokio_tungstenite::tungstenite::Message;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let last = s.lock().unwrap().windows.last().and_then(|w| w["window_start"].as_i64());
                let u = match last {
                    Some(l) => format!("{url}?after={l}"),
                    None => url.clone(),
                };
                if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&u).await {
                    while let Some(Ok(m)) = ws.next().await {
                        if let Message::Text(t) = m {
                            if let Ok(w) = serde_json::from_str::<Value>(&t) {
                                s.lock().unwrap().windows.push(w);
                            }
                        }
                    }
                }
                s.lock().unwrap().reconnects += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Viewer { id: id.to_owned(), seen, task }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().windows.len()
    }

    pub fn windows(&self) -> Vec<Value> {
        self.seen.lock().unwrap().windows.clone()
    }

    pub fn totals(&self) -> BTreeMap<String, u64> {
        totals(&self.windows())
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn totals(windows: &[Value]) -> BTreeMap<String, u64> {
    let mut t = BTreeMap::new();
    for w in windows {
        for (e, n) in w["counts"].as_object().expect("counts") {
            *t.entry(e.clone()).or_default() += n.as_u64().unwrap();
        }
    }
    t.retain(|_, n| *n > 0);
    t
}

/// Each window once, in order, none skipped.
pub fn assert_consecutive(windows: &[Value], size_ms: i64, who: &str) {
    for pair in windows.windows(2) {
        let (a, b) = (pair[0]["window_start"].as_i64().unwrap(), pair[1]["window_start"].as_i64().unwrap());
        assert_eq!(b - a, size_ms, "{who}: window {a} then {b} (a gap or a repeat)");
    }
}

/// Every viewer saw the same content for every window they both saw.
pub fn assert_identical(viewers: &[Viewer]) {
    let maps: Vec<(String, BTreeMap<i64, Value>)> = viewers
        .iter()
        .map(|v| (v.id.clone(), v.windows().into_iter().map(|w| (w["window_start"].as_i64().unwrap(), w["counts"].clone())).collect()))
        .collect();
    let (first_id, first) = &maps[0];
    for (id, m) in &maps[1..] {
        for (w, counts) in m {
            if let Some(c) = first.get(w) {
                assert_eq!(c, counts, "window {w}: {first_id} and {id} differ");
            }
        }
    }
}

/// Waits until every viewer has seen `want` in total (and then one more window, to catch extras).
pub async fn wait_totals(viewers: &[Viewer], want: &BTreeMap<String, u64>, timeout: Duration, topo: &mut Topology) {
    let deadline = Instant::now() + timeout;
    loop {
        if viewers.iter().all(|v| &v.totals() == want) {
            break;
        }
        topo.assert_all_running();
        if Instant::now() > deadline {
            let got: Vec<String> = viewers.iter().map(|v| format!("{}: {:?} ({} windows)", v.id, v.totals(), v.count())).collect();
            panic!("viewers did not reach the acked totals {want:?} within {timeout:?}:\n{}", got.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let counts: Vec<usize> = viewers.iter().map(Viewer::count).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while viewers.iter().zip(&counts).any(|(v, c)| v.count() < c + 2) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_windows(viewers: &[Viewer], n: usize, timeout: Duration, topo: &mut Topology) {
    let deadline = Instant::now() + timeout;
    while viewers.iter().any(|v| v.count() < n) {
        topo.assert_all_running();
        if Instant::now() > deadline {
            let got: Vec<String> = viewers.iter().map(|v| format!("{} {}", v.id, v.count())).collect();
            panic!(
                "viewers did not get {n} windows within {timeout:?} (got: {}); stage counters:\n{}",
                got.join(", "),
                topo.counters().await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `events` (emoji, count) as batches of `batch` to `url`; returns what was acknowledged.
pub async fn send_batches(url: &str, events: &[(&str, u64)], batch: usize) -> BTreeMap<String, u64> {
    let mut acked = BTreeMap::new();
    let mut flat: Vec<&str> = Vec::new();
    for (e, n) in events {
        flat.extend(std::iter::repeat_n(*e, *n as usize));
    }
    let client = reqwest::Client::new();
    for chunk in flat.chunks(batch) {
        let body: Vec<Value> = chunk.iter().enumerate().map(|(i, e)| json!({"emoji": e, "client_id": format!("sender-{i}")})).collect();
        let r = client.post(format!("{url}/emojis")).json(&body).send().await.unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{v}");
        for e in chunk {
            *acked.entry((*e).to_owned()).or_default() += 1;
        }
    }
    acked
}

pub fn merge(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

/// What a [`keep_sending`] sender got 200 for, per emoji.
pub type Acked = Arc<Mutex<BTreeMap<String, u64>>>;

/// Sends batches of `n` emojis to `url` every `every` until the token is cancelled, tallying every
/// 200; the task returns the other outcomes by status (0: no answer within `timeout`).
pub fn keep_sending(
    url: String,
    n: usize,
    every: Duration,
    timeout: Duration,
) -> (Acked, tokio_util::sync::CancellationToken, tokio::task::JoinHandle<BTreeMap<u16, u64>>) {
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let (a, s) = (acked.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(timeout).build().unwrap();
        let emojis = ["😀", "😂", "😍", "👍"];
        let mut i = 0usize;
        let mut refused = BTreeMap::new();
        while !s.is_cancelled() {
            let batch: Vec<&str> = (0..n).map(|k| emojis[(i + k * k) % emojis.len()]).collect();
            let body: Vec<Value> = batch.iter().map(|e| json!({"emoji": e, "client_id": "sender"})).collect();
            match client.post(format!("{url}/emojis")).json(&body).send().await {
                Ok(r) if r.status() == 200 => {
                    let mut a = a.lock().unwrap();
                    for e in batch {
                        *a.entry(e.to_owned()).or_default() += 1;
                    }
                }
                Ok(r) => *refused.entry(r.status().as_u16()).or_default() += 1,
                Err(_) => *refused.entry(0).or_default() += 1,
            }
            i += 1;
            tokio::time::sleep(every).await;
        }
        refused
    });
    (acked, stop, task)
}

/// The longest a window ending in `(from, to]` (ms) waited to be published: `closed_at - window_end`.
pub fn longest_wait(windows: &[Value], from: i64, to: i64) -> i64 {
    windows
        .iter()
        .filter(|w| w["window_end"].as_i64().is_some_and(|e| e > from && e <= to))
        .map(|w| w["closed_at"].as_i64().unwrap() - w["window_end"].as_i64().unwrap())
        .max()
        .unwrap_or(0)
}

/// Every viewer got each window once, in order, counting exactly what was acked, and all saw the same windows.
pub fn assert_exact(viewers: &[Viewer], acked: &BTreeMap<String, u64>, window_ms: i64) {
    for v in viewers {
        let w = v.windows();
        assert_consecutive(&w, window_ms, &v.id);
        assert_eq!(&totals(&w), acked, "{}: counted exactly what was acked", v.id);
    }
    assert_identical(viewers);
}
