//! The multi-process topology on a real 3-broker Kafka cluster (replication 3, min.insync.replicas 2)
//! through the operations a Kafka user performs: a rolling restart of every broker, one at a time,
//! and the `kill -9` of the broker that leads most partitions. Ingest is `--ack durable`, so every
//! 200 means "on two replicas". In each: every 200 counted exactly once, no window missing or
//! published twice, every viewer keeps receiving.
//!
//! Each test starts its own cluster with `scripts/kafka start --brokers 3` (on the test broker's
//! port + 200 and up); the tests take turns, since one cluster at a time fits this machine.
//!
//! In `scripts/test`; alone:
//! `EMOSTREAM_TEST_KAFKA=127.0.0.1:19092 cargo test --test kafka_cluster -- --nocapture`
//! (no broker needs to run on that port: only the port is read). When a stage stops making progress,
//! the failing test leaves every stage's log in the directory it prints; `EMOSTREAM_TEST_STACKS=1`
//! adds their threads (`<stage>.stacks`, from gdb) and `EMOSTREAM_TEST_KAFKA_DEBUG=cgrp,eos,fetch`
//! librdkafka's debug log.

#![cfg(feature = "kafka")]

mod distributed;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use distributed::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;

/// One cluster at a time.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    port: u16,
}

impl Cluster {
    fn start() -> Cluster {
        let main_port: u16 = brokers().rsplit(':').next().unwrap().parse().unwrap();
        let c = Cluster { port: main_port + 200 };
        c.script(&["stop", "--clean"]);
        c.script(&["start", "--brokers", "3"]);
        c
    }

    fn script(&self, args: &[&str]) -> String {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
            .args(args)
            .env("KAFKA_PORT", self.port.to_string())
            .output()
            .expect("scripts/kafka runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprint!("{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "scripts/kafka {args:?} on port {}", self.port);
        text
    }

    fn bootstrap(&self) -> String {
        self.script(&["bootstrap"]).trim().to_owned()
    }

    fn metadata_client(&self) -> BaseConsumer {
        ClientConfig::new().set("bootstrap.servers", self.bootstrap()).set("group.id", "metadata").create().expect("a metadata client")
    }

    /// Waits until every partition of the namespace's topics and of Kafka's internal topics has all
    /// its replicas in sync, as an operator does before restarting the next broker.
    fn wait_in_sync(&self, namespace: &str, timeout: Duration) {
        let client = self.metadata_client();
        let deadline = Instant::now() + timeout;
        loop {
            let lagging: Vec<String> = match client.fetch_metadata(None, Duration::from_secs(5)) {
                Ok(md) => md
                    .topics()
                    .iter()
                    .filter(|t| t.name().starts_with(namespace) || t.name().starts_with("__"))
                    .flat_map(|t| {
                        t.partitions()
                            .iter()
                            .filter(|p| p.isr().len() < p.replicas().len() || p.leader() < 0)
                            .map(move |p| format!("{}[{}] isr {:?} of {:?}", t.name(), p.id(), p.isr(), p.replicas()))
                    })
                    .collect(),
                Err(e) => vec![format!("metadata: {e}")],
            };
            if lagging.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "replicas not back in sync within {timeout:?}: {lagging:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Node number (= node.id) leading the most partitions, and how many it leads of how many.
    fn busiest_leader(&self) -> (i32, usize, usize) {
        let md = self.metadata_client().fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
        let mut led = BTreeMap::<i32, usize>::new();
        let mut all = 0;
        for t in md.topics() {
            for p in t.partitions() {
                *led.entry(p.leader()).or_default() += 1;
                all += 1;
            }
        }
        let (node, n) = led.into_iter().max_by_key(|(_, n)| *n).expect("partitions");
        (node, n, all)
    }

    /// Every partition of `topic` has 3 replicas.
    fn assert_replicated(&self, topic: &str) {
        let md = self.metadata_client().fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let t = &md.topics()[0];
        assert!(!t.partitions().is_empty(), "{topic} exists");
        for p in t.partitions() {
            assert_eq!(p.replicas().len(), 3, "{topic}[{}] has 3 replicas", p.id());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
            .args(["stop", "--clean"])
            .env("KAFKA_PORT", self.port.to_string())
            .status();
    }
}

const SHAPE: Shape = Shape { ingest: 2, aggregate: 2, clusters: 2, subscribers: 1, partitions: 6, window: "1s", ack: "durable" };

/// A viewer on each subscriber (SSE on one, WebSocket on the other), each past its first windows.
async fn viewers(topo: &mut Topology) -> Vec<Viewer> {
    let mut viewers = Vec::new();
    for c in 1..=SHAPE.clusters {
        let id = format!("viewer-{c}");
        let sub = topo.subscribe(json!({"client_id": id, "subscription_key": format!("{c}1")})).await;
        viewers.push(if c % 2 == 1 {
            Viewer::sse(&id, sub["stream_url"].as_str().unwrap().to_owned())
        } else {
            Viewer::ws(&id, sub["ws_url"].as_str().unwrap().to_owned())
        });
    }
    wait_windows(&viewers, 2, Duration::from_secs(90), topo).await;
    viewers
}

/// Steady senders on every ingest; a request may wait through a leader election, never time out.
/// A steady sender: what it got acknowledged, its stop, and its refusals by status.
type Sender = (Acked, tokio_util::sync::CancellationToken, tokio::task::JoinHandle<BTreeMap<u16, u64>>);

fn senders(topo: &Topology) -> Vec<Sender> {
    topo.ingest_urls.iter().map(|u| keep_sending(u.clone(), 20, Duration::from_millis(20), Duration::from_secs(90))).collect()
}

async fn stop_senders(senders: Vec<Sender>) -> (BTreeMap<String, u64>, BTreeMap<u16, u64>) {
    let (mut acked, mut refused) = (BTreeMap::new(), BTreeMap::new());
    for (a, stop, task) in senders {
        stop.cancel();
        for (status, n) in task.await.unwrap() {
            *refused.entry(status).or_default() += n;
        }
        merge(&mut acked, a.lock().unwrap().clone());
    }
    (acked, refused)
}

/// Waits until every viewer has `more` windows beyond `before`.
async fn still_receiving(viewers: &[Viewer], more: usize, what: &str, topo: &mut Topology) {
    let before: Vec<usize> = viewers.iter().map(Viewer::count).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while viewers.iter().zip(&before).any(|(v, b)| v.count() < b + more) {
        topo.assert_all_running();
        if Instant::now() > deadline {
            let got: Vec<String> = viewers.iter().zip(&before).map(|(v, b)| format!("{} {b} -> {}", v.id, v.count())).collect();
            panic!("viewers stopped receiving windows {what} (windows: {}); stage counters:\n{}", got.join(", "), topo.counters().await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check(viewers: &[Viewer], acked: &BTreeMap<String, u64>, window_ms: i64) {
    let w = viewers[0].windows();
    eprintln!("longest wait of a window for its publication: {} ms over {} windows", longest_wait(&w, 0, i64::MAX), w.len());
    assert_exact(viewers, acked, window_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_all_three_brokers_loses_and_repeats_nothing() {
    let _turn = CLUSTER.lock().await;
    let cluster = Cluster::start();
    let mut topo = Topology::start_on("rolling", SHAPE, &cluster.bootstrap(), 3).await;
    cluster.assert_replicated(&format!("{}.emoji_topic", topo.namespace));
    let viewers = viewers(&mut topo).await;

    let sending = senders(&topo);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in 1..=3 {
        let started = Instant::now();
        cluster.script(&["restart-broker", &n.to_string()]);
        cluster.wait_in_sync(&topo.namespace, Duration::from_secs(120));
        eprintln!("broker {n} restarted and back in sync in {:?}", started.elapsed());
        still_receiving(&viewers, 2, &format!("after broker {n} restarted"), &mut topo).await;
    }
    let (acked, refused) = stop_senders(sending).await;
    assert!(!refused.contains_key(&0), "every request was answered: {refused:?}");
    assert!(acked.values().sum::<u64>() > 2_000, "the senders kept being acknowledged: {acked:?}, refused {refused:?}");
    eprintln!("acked {acked:?}, refused {refused:?}");

    wait_totals(&viewers, &acked, Duration::from_secs(120), &mut topo).await;
    check(&viewers, &acked, topo.window_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_busiest_leader_loses_and_repeats_nothing() {
    let _turn = CLUSTER.lock().await;
    let cluster = Cluster::start();
    let mut topo = Topology::start_on("leaderkill", SHAPE, &cluster.bootstrap(), 3).await;
    let viewers = viewers(&mut topo).await;

    let sending = senders(&topo);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (node, led, all) = cluster.busiest_leader();
    eprintln!("killing broker {node}: it leads {led} of {all} partitions");
    let killed = Instant::now();
    cluster.script(&["kill-broker", &node.to_string()]);
    still_receiving(&viewers, 3, &format!("after broker {node} was killed"), &mut topo).await;
    eprintln!("viewers got 3 more windows {:?} after the kill", killed.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.script(&["start-broker", &node.to_string()]);
    still_receiving(&viewers, 2, &format!("after broker {node} came back"), &mut topo).await;
    let (acked, refused) = stop_senders(sending).await;
    assert!(!refused.contains_key(&0), "every request was answered: {refused:?}");
    assert!(acked.values().sum::<u64>() > 2_000, "the senders kept being acknowledged: {acked:?}, refused {refused:?}");
    eprintln!("acked {acked:?}, refused {refused:?}");

    wait_totals(&viewers, &acked, Duration::from_secs(120), &mut topo).await;
    check(&viewers, &acked, topo.window_ms);
}
