//! The distributed topology as separate OS processes over the real Kafka broker: 2 ingest,
//! 2 aggregate, 1 publish, 3 cluster, 3×3 subscribers and the registry. A known mix of emojis goes
//! in; every viewer, one per subscriber, must count exactly that and see the same windows.

#![cfg(feature = "kafka")]

mod distributed;

use std::collections::BTreeMap;
use std::time::Duration;

use distributed::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eighteen_processes_count_exactly_and_every_viewer_sees_the_same_windows() {
    let mut topo =
        Topology::start("topo", Shape { ingest: 2, aggregate: 2, clusters: 3, subscribers: 3, partitions: 6, window: "1s", ack: "fast" })
            .await;
    assert_eq!(topo.procs.len(), 18);

    // One viewer on every subscriber, placed by key and by ids, half over SSE and half over WebSocket.
    let mut viewers = Vec::new();
    for c in 1..=3u32 {
        for m in 1..=3u32 {
            let id = format!("viewer-{c}{m}");
            let body = if (c + m) % 2 == 0 {
                json!({"client_id": id, "subscription_key": format!("{c}{m}")})
            } else {
                json!({"client_id": id, "cluster_id": c, "subscriber_id": m})
            };
            let sub = topo.subscribe(body).await;
            assert_eq!(sub["subscription_key"], format!("{c}{m}"), "{sub}");
            let viewer = if (c + m) % 2 == 0 {
                Viewer::sse(&id, sub["stream_url"].as_str().expect("stream_url").to_owned())
            } else {
                Viewer::ws(&id, sub["ws_url"].as_str().expect("ws_url").to_owned())
            };
            viewers.push(viewer);
        }
    }
    let subs: serde_json::Value = reqwest::get(format!("{}/subscriptions", topo.registry_url)).await.unwrap().json().await.unwrap();
    assert_eq!(subs["23"], json!(["viewer-23"]), "{subs}");

    // The pipeline is flowing (empty windows are published too) before anything is sent.
    wait_windows(&viewers, 2, Duration::from_secs(90), &mut topo).await;

    let mix: [(&str, u64); 4] = [("😀", 1200), ("😂", 700), ("😍", 350), ("👍", 150)];
    let (a, b) = (topo.ingest_urls[0].clone(), topo.ingest_urls[1].clone());
    let (first, second) = tokio::join!(send_batches(&a, &mix, 97), send_batches(&b, &mix, 13));
    let mut acked = BTreeMap::new();
    merge(&mut acked, first);
    merge(&mut acked, second);
    assert_eq!(acked["😀"], 2400);

    wait_totals(&viewers, &acked, Duration::from_secs(60), &mut topo).await;
    for v in &viewers {
        assert_consecutive(&v.windows(), topo.window_ms, &v.id);
        assert_eq!(v.totals(), acked, "{} counted exactly what was acked", v.id);
    }
    assert_identical(&viewers);

    // The registry's history agrees with what viewers saw.
    let windows: serde_json::Value =
        reqwest::get(format!("{}/windows?limit=100000", topo.registry_url)).await.unwrap().json().await.unwrap();
    let history = windows["windows"].as_array().cloned().expect("windows");
    assert_eq!(totals(&history), acked, "GET /windows at the registry");
    emotions::assert_recomputed(&history, "kafka mode");

    // The stages without an API of their own serve their metrics at --metrics-addr.
    for (name, metric) in [
        ("aggregate-1", "emostream_partials_emitted_total"),
        ("publish", "emostream_windows_published_total"),
        ("cluster-2", "emostream_windows_forwarded_total"),
    ] {
        let text = reqwest::get(format!("{}/metrics", topo.metrics_urls[name])).await.unwrap().text().await.unwrap();
        let value: f64 = text
            .lines()
            .find(|l| l.starts_with(metric))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no {metric} in /metrics:\n{text}"));
        assert!(value > 0.0, "{name}: {metric} {value}");
    }

    // SIGTERM: every process exits cleanly.
    let names: Vec<String> = topo.procs.keys().cloned().collect();
    for n in names {
        let status = topo.proc(&n).terminate();
        assert!(status.success(), "{n} exited with {status}");
    }
}
