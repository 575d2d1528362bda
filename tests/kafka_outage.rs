//! The broker goes away and comes back: ingest keeps answering (its buffer is bounded, then 503),
//! and once Kafka is back every acknowledged emoji is counted exactly once, no window missing.
//!
//! This test starts its own broker (scripts/kafka on the test broker's port + 100) so that stopping
//! it does not disturb the other Kafka tests.

#![cfg(feature = "kafka")]

mod distributed;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use distributed::*;
use serde_json::{Value, json};

struct Broker {
    port: u16,
}

impl Broker {
    fn script(&self, args: &[&str]) {
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
            .args(args)
            .env("KAFKA_PORT", self.port.to_string())
            .status()
            .expect("scripts/kafka runs");
        assert!(status.success(), "scripts/kafka {args:?} on port {}", self.port);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.script(&["stop", "--clean"]);
    }
}

async fn post_batch(client: &reqwest::Client, url: &str, emoji: &str, n: usize) -> u16 {
    let body: Vec<Value> = (0..n).map(|i| json!({"emoji": emoji, "client_id": format!("c{i}")})).collect();
    match client.post(format!("{url}/emojis")).json(&body).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_keeps_answering_while_kafka_is_away_and_nothing_acked_is_lost() {
    let main_port: u16 = brokers().rsplit(':').next().unwrap().parse().unwrap();
    let broker = Broker { port: main_port + 100 };
    broker.script(&["stop", "--clean"]);
    broker.script(&["start"]);
    let addr = format!("127.0.0.1:{}", broker.port);

    let (ingest_port, api_port) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("emostream-outage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let args: Vec<String> = [
        "up",
        "--kafka",
        &addr,
        "--namespace",
        "outage",
        "--window",
        "1s",
        "--grace",
        "200ms",
        "--partitions",
        "2",
        "--clusters",
        "1",
        "--subscribers",
        "1",
        "--ingest-addr",
        &format!("127.0.0.1:{ingest_port}"),
        "--api-addr",
        &format!("127.0.0.1:{api_port}"),
        "--buffer",
        "5000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut up = Proc::spawn("up", &args, &dir);
    let (ingest, api) = (format!("http://127.0.0.1:{ingest_port}"), format!("http://127.0.0.1:{api_port}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("{api}/healthz")).await.map(|r| r.status() != 200).unwrap_or(true) {
        up.assert_running();
        assert!(Instant::now() < deadline, "emostream up --kafka did not start; log:\n{}", tail(&up.log));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sub: Value = reqwest::Client::new()
        .post(format!("{api}/subscribe"))
        .json(&json!({"client_id": "v"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let viewer = Viewer::sse("v", sub["stream_url"].as_str().unwrap().to_owned());
    let deadline = Instant::now() + Duration::from_secs(60);
    while viewer.count() < 2 {
        up.assert_running();
        assert!(Instant::now() < deadline, "no windows; log:\n{}", tail(&up.log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    assert_eq!(post_batch(&client, &ingest, "😀", 300).await, 200);
    *acked.entry("😀".into()).or_default() += 300;
    // Steady state first: the outage is one of a running pipeline, not of a broker still loading its
    // coordinators seconds after it started (see the README's known limits).
    let deadline = Instant::now() + Duration::from_secs(60);
    while viewer.totals() != acked {
        up.assert_running();
        assert!(Instant::now() < deadline, "the first batch was not counted; log:\n{}", tail(&up.log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let readyz = |url: String| async move {
        let r = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap().get(url).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(readyz(format!("{api}/readyz")).await, (200, json!({"status": "ready"})), "ready while Kafka answers");

    // Kafka goes away. Ingest still answers: 200 while its buffer has room, then 503, never a hang.
    broker.script(&["stop"]);
    let mut statuses = BTreeMap::<u16, u32>::new();
    for _ in 0..30 {
        let s = post_batch(&client, &ingest, "😂", 250).await;
        *statuses.entry(s).or_default() += 1;
        if s == 200 {
            *acked.entry("😂".into()).or_default() += 250;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(statuses.get(&200).copied().unwrap_or(0) >= 10, "answers while Kafka is away: {statuses:?}");
    assert!(statuses.get(&503).copied().unwrap_or(0) >= 1, "a full buffer says 503: {statuses:?}");
    assert_eq!(statuses.keys().filter(|s| **s != 200 && **s != 503).count(), 0, "only 200 or 503: {statuses:?}");
    up.assert_running();
    // Not ready while its log is away (on both ports), though still live.
    for base in [&api, &ingest] {
        let (status, body) = readyz(format!("{base}/readyz")).await;
        assert_eq!(status, 503, "{base}/readyz while Kafka is away: {body}");
        assert!(body["reasons"].to_string().contains("the log"), "{body}");
        assert_eq!(reqwest::get(format!("{base}/livez")).await.unwrap().status(), 200);
    }

    // Kafka is back: ingest answers 200 again within 5 s, and everything acknowledged comes through,
    // exactly once.
    broker.script(&["start"]);
    let back = Instant::now();
    let mut seen = BTreeMap::<u16, u32>::new();
    loop {
        up.assert_running();
        let s = post_batch(&client, &ingest, "👍", 100).await;
        *seen.entry(s).or_default() += 1;
        if s == 200 {
            *acked.entry("👍".into()).or_default() += 100;
            break;
        }
        assert!(s == 503, "while draining, ingest answers 503 (0: no answer): {s}");
        assert!(back.elapsed() < Duration::from_secs(5), "ingest did not answer 200 within 5 s of the broker's return: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ingest answered 200 {:?} after the broker was back ({seen:?})", back.elapsed());
    let deadline = Instant::now() + Duration::from_secs(60);
    while readyz(format!("{api}/readyz")).await.0 != 200 {
        assert!(Instant::now() < deadline, "not ready again after the broker's return: {}", readyz(format!("{api}/readyz")).await.1);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while viewer.totals() != acked {
        up.assert_running();
        assert!(Instant::now() < deadline, "acked {acked:?}, counted {:?}; log:\n{}", viewer.totals(), tail(&up.log));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(viewer.totals(), acked, "nothing counted twice");
    assert_consecutive(&viewer.windows(), 1000, "viewer");
    let status = up.terminate();
    assert!(status.success(), "clean exit after the outage: {status}");
}
