//! The distributed stages wired together as separate "processes" (each its own `Started`, sharing
//! nothing but the log) over the in-process log: the registry and subscriber protocol over the
//! subscriptions topic, stream URLs, misdirected clients, unsubscribe, and a subscriber restart that
//! its clients resume across with Last-Event-ID. The same runners run over Kafka in the
//! `emostream ingest|aggregate|publish|cluster|subscriber|registry` processes.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use emostream::client::Transport;
use emostream::core::emoji::EmojiSet;
use emostream::core::emotion::{EmotionMap, TrendConfig};
use emostream::core::scale::ScaleRule;
use emostream::core::window::WindowSpec;
use emostream::pipeline::process as distributed;
use emostream::pipeline::{IngestStage, RegistryStage, Started, SubscriberStage};
use emostream::http::ingest::IngestLimits;
use emostream::log::Log;
use emostream::log::memory::MemoryLog;
use emostream::stages::ingest::{AckMode, IngestConfig};
use emostream::stages::{aggregate, cluster, publish};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WINDOW_MS: i64 = 200;
const PARTITIONS: u32 = 2;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn subscriber_stage(cluster: u32, id: u32, addr: SocketAddr) -> SubscriberStage {
    SubscriberStage { cluster, id, api_addr: addr, advertise: None, history: 100, partitions: PARTITIONS, serve: Default::default() }
}

/// Every stage but the subscribers, each started on its own.
async fn upstream(log: &Arc<dyn Log>, clusters: u32) -> (Vec<Started>, String) {
    let window = WindowSpec::new(WINDOW_MS);
    let ingest = distributed::start_ingest(
        log.clone(),
        IngestStage {
            addr: any_port(),
            emojis: EmojiSet::default(),
            config: IngestConfig {
                linger: Duration::from_millis(10),
                batch: 20_000,
                buffer: 1_000_000,
                ack: AckMode::Fast,
                partitions: PARTITIONS,
            },
            limits: IngestLimits { max_body: 64 * 1024, max_batch_body: 4 << 20 },
            serve: Default::default(),
        },
    )
    .await
    .unwrap();
    let ingest_url = format!("http://{}", ingest.addr.unwrap());
    assert!(ingest.ready.starts_with(&format!("ingest listening on {ingest_url}")), "{}", ingest.ready);
    let mut stages = vec![ingest];
    // Two aggregators share the partitions.
    for _ in 0..2 {
        let config = aggregate::AggregateConfig { window, grace: Duration::from_millis(50), instance_id: None };
        stages.push(distributed::start_aggregate(log.clone(), config, PARTITIONS).await.unwrap());
    }
    let config = publish::PublishConfig {
        window,
        scale: ScaleRule::Normalize(4),
        emotions: Arc::new(EmotionMap::default()),
        trend: TrendConfig::default(),
        instance_id: None,
    };
    stages.push(distributed::start_publish(log.clone(), config, PARTITIONS).await.unwrap());
    for c in 1..=clusters {
        stages.push(distributed::start_cluster(log.clone(), cluster::ClusterConfig { id: c, instance_id: None }, PARTITIONS).await.unwrap());
    }
    (stages, ingest_url)
}

async fn start_registry(log: &Arc<dyn Log>) -> (Started, String) {
    let stage = RegistryStage {
        api_addr: any_port(),
        clusters: 2,
        subscribers: 2,
        history: 100,
        partitions: PARTITIONS,
        serve: Default::default(),
    };
    let r = distributed::start_registry(log.clone(), stage).await.unwrap();
    let url = format!("http://{}", r.addr.unwrap());
    assert!(r.ready.starts_with(&format!("registry listening on {url}")), "{}", r.ready);
    (r, url)
}

async fn start_subscriber(log: &Arc<dyn Log>, cluster: u32, id: u32, addr: SocketAddr) -> (Started, String) {
    let s = distributed::start_subscriber(log.clone(), subscriber_stage(cluster, id, addr)).await.unwrap();
    let url = format!("http://{}", s.addr.unwrap());
    assert!(s.ready.starts_with(&format!("subscriber {cluster}.{id} listening on {url}")), "{}", s.ready);
    (s, url)
}

/// Waits until the registry knows `n` running subscribers.
async fn wait_announced(registry: &str, n: usize) -> Value {
    for _ in 0..100 {
        let v: Value = reqwest::get(format!("{registry}/subscribers")).await.unwrap().json().await.unwrap();
        if v.as_object().unwrap().len() == n {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("subscribers did not announce themselves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_and_subscribers_agree_through_the_subscriptions_topic() {
    let log: Arc<dyn Log> = Arc::new(MemoryLog::new());
    let (stages, ingest) = upstream(&log, 2).await;
    let (registry, api) = start_registry(&log).await;

    // No subscriber yet: a subscription cannot be placed, and says why.
    let (s, v) = post_json(&format!("{api}/subscribe"), &json!({"client_id": "early"})).await;
    assert_eq!(s, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no subscriber is running"), "{v}");

    let (sub11, url11) = start_subscriber(&log, 1, 1, any_port()).await;
    let (sub21, url21) = start_subscriber(&log, 2, 1, any_port()).await;
    let dir = wait_announced(&api, 2).await;
    assert_eq!(dir, json!({"11": url11, "21": url21}));

    // Key form to a subscriber that is not running: 503 naming it. Out of range: 400.
    let (s, v) = post_json(&format!("{api}/subscribe"), &json!({"client_id": "x", "subscription_key": "22"})).await;
    assert_eq!(s, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("subscriber 2.2 is not running"), "{v}");
    let (s, _) = post_json(&format!("{api}/subscribe"), &json!({"client_id": "x", "subscription_key": "33"})).await;
    assert_eq!(s, 400);

    // Least-loaded placement spreads over the announced subscribers; each answer says where to go.
    let a = subscribe(&api, json!({"client_id": "a"})).await;
    let b = subscribe(&api, json!({"client_id": "b"})).await;
    let c = subscribe(&api, json!({"client_id": "c", "cluster_id": 2, "subscriber_id": 1})).await;
    let mut keys = vec![a["subscription_key"].as_str().unwrap(), b["subscription_key"].as_str().unwrap()];
    keys.sort_unstable();
    assert_eq!(keys, ["11", "21"]);
    for v in [&a, &b, &c] {
        let base = if v["subscription_key"] == "11" { &url11 } else { &url21 };
        assert_eq!(v["stream_url"], format!("{base}/stream/{}", v["client_id"].as_str().unwrap()), "{v}");
        assert_eq!(v["ws_url"], format!("{}/ws/{}", base.replacen("http", "ws", 1), v["client_id"].as_str().unwrap()), "{v}");
        assert!(v["stream_path"].is_string() && v["subscriptions"].is_object(), "every embedded field stays: {v}");
    }
    // Read-your-writes: the registry's own view has them at once.
    let subs: Value = reqwest::get(format!("{api}/subscriptions")).await.unwrap().json().await.unwrap();
    assert_eq!(subs.as_object().unwrap().values().map(|v| v.as_array().unwrap().len()).sum::<usize>(), 3, "{subs}");

    // Streams at the given URLs, right after subscribing (the subscriber waits for the registry's write).
    let (mut rx_a, ha) = sse_client(a["stream_url"].as_str().unwrap().to_string());
    let (mut rx_c, hc) = ws_client(c["ws_url"].as_str().unwrap().to_string());
    wait_for(&mut rx_a, 1).await;
    wait_for(&mut rx_c, 1).await;

    // The wrong subscriber says where to go.
    let wrong = if a["subscription_key"] == "11" { &url21 } else { &url11 };
    let r = reqwest::get(format!("{wrong}/stream/a")).await.unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["stream_url"], a["stream_url"], "{v}");
    // Nobody: 404 after the short wait.
    assert_eq!(reqwest::get(format!("{url11}/stream/nobody")).await.unwrap().status(), 404);

    // Emojis flow through every stage to both clusters.
    for _ in 0..40 {
        let (s, _) = post_json(&format!("{ingest}/emoji"), &json!({"emoji": "😂", "client_id": "u"})).await;
        assert_eq!(s, 200);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let w: Value = reqwest::get(format!("{url21}/windows?limit=100")).await.unwrap().json().await.unwrap();
        if totals(w["windows"].as_array().unwrap()).get("😂") == Some(&40) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "40 emojis did not reach subscriber 2.1: {w}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Unsubscribe at the registry ends the client's stream at its subscriber.
    let (s, v) = post_json(&format!("{api}/unsubscribe"), &json!({"client_id": "a"})).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["subscriptions"].as_object().unwrap().values().all(|ids| !ids.as_array().unwrap().contains(&json!("a"))), "{v}");
    let windows = tokio::time::timeout(Duration::from_secs(5), ha).await.expect("stream ends after unsubscribe").unwrap();
    assert_consecutive(&windows, WINDOW_MS, "a");
    let (s, _) = post_json(&format!("{api}/unsubscribe"), &json!({"client_id": "a"})).await;
    assert_eq!(s, 404);

    // A subscriber that stops says so: the registry stops placing clients there.
    sub21.stop().await.unwrap();
    let windows = tokio::time::timeout(Duration::from_secs(5), hc).await.expect("streams end when the subscriber stops").unwrap();
    assert_consecutive(&windows, WINDOW_MS, "c");
    assert_eq!(wait_announced(&api, 1).await, json!({"11": url11}));
    let d = subscribe(&api, json!({"client_id": "d"})).await;
    assert_eq!(d["subscription_key"], "11");

    sub11.stop().await.unwrap();
    registry.stop().await.unwrap();
    for s in stages {
        s.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resume_without_a_gap_across_a_subscriber_restart() {
    let log: Arc<dyn Log> = Arc::new(MemoryLog::new());
    let (stages, _ingest) = upstream(&log, 1).await;
    let (registry, api) = start_registry(&log).await;
    let (sub, url) = start_subscriber(&log, 1, 1, any_port()).await;
    let addr: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
    wait_announced(&api, 1).await;
    let v = subscribe(&api, json!({"client_id": "r", "subscription_key": "11"})).await;
    let stream_url = v["stream_url"].as_str().unwrap().to_string();

    // `emostream client`'s receiver, over both transports, follows the same stream throughout.
    let w = subscribe(&api, json!({"client_id": "w", "subscription_key": "11"})).await;
    let stop = CancellationToken::new();
    let mut followers = Vec::new();
    for (transport, url) in [(Transport::Sse, stream_url.clone()), (Transport::Ws, w["ws_url"].as_str().unwrap().to_string())] {
        let (tx, rx) = tokio::sync::watch::channel(0usize);
        let stop = stop.clone();
        followers.push((
            rx,
            tokio::spawn(async move {
                let mut got = Vec::new();
                emostream::client::receive(reqwest::Client::new(), transport, url, stop, |m| {
                    got.push(serde_json::to_value(&m).unwrap());
                    tx.send_replace(got.len());
                })
                .await;
                got
            }),
        ));
    }

    let before = sse_take(&stream_url, None, 3).await;
    let last = before[2]["window_start"].as_i64().unwrap();
    for (rx, _) in &mut followers {
        wait_for(rx, 3).await;
    }

    // The subscriber goes away for a few windows and comes back at the same address.
    sub.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3 * WINDOW_MS as u64)).await;
    let (sub, _) = start_subscriber(&log, 1, 1, addr).await;
    let after = sse_take(&stream_url, Some(last), 6).await;
    assert_eq!(after[0]["window_start"].as_i64().unwrap(), last + WINDOW_MS, "no gap, no repeat: {after:?}");
    assert_consecutive(&after, WINDOW_MS, "after the restart");

    // The client receivers reconnected by themselves and missed nothing.
    let until = after[5]["window_start"].as_i64().unwrap();
    for (rx, h) in followers.iter_mut() {
        let n = *rx.borrow();
        wait_for(rx, n + 4).await;
        assert!(!h.is_finished());
    }
    stop.cancel();
    for ((_, h), name) in followers.into_iter().zip(["client over SSE", "client over WebSocket"]) {
        let got = h.await.unwrap();
        assert_consecutive(&got, WINDOW_MS, name);
        assert!(got.last().unwrap()["window_start"].as_i64().unwrap() >= until, "{name} kept receiving after the restart");
    }

    sub.stop().await.unwrap();
    registry.stop().await.unwrap();
    for s in stages {
        s.stop().await.unwrap();
    }
}
