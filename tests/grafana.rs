//! `deploy/grafana/emostream.json` queries only metrics that `emostream up` serves.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The metric names in a PromQL expression: the words starting `emostream_` or `process_`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            if word.starts_with("emostream_") || word.starts_with("process_") {
                names.push(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_grafana_dashboard_queries_is_served() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/emostream.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queried.extend(metric_names(target["expr"].as_str().expect("expr")));
        }
    }
    assert!(queried.len() >= 10, "the dashboard queries the pipeline: {queried:?}");

    // A running pipeline with a viewer and a few windows of emojis, so every series exists.
    let mut server = Server::start(&["--window", "500ms", "--grace", "100ms"]).await;
    let sub = subscribe(&server.api, json!({"client_id": "grafana"})).await;
    let (mut rx, _h) = sse_client(format!("{}{}", server.api, sub["stream_path"].as_str().unwrap()));
    for i in 0..20 {
        let (s, _) = post_json(&format!("{}/emoji", server.ingest), &json!({"emoji": "😂", "client_id": format!("g{i}")})).await;
        assert_eq!(s, 200);
    }
    wait_for(&mut rx, 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = reqwest::get(format!("{}/metrics", server.api)).await.unwrap().text().await.unwrap();
    let served: std::collections::BTreeSet<&str> =
        metrics.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let missing: Vec<&String> = queried.iter().filter(|m| !served.contains(m.as_str())).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics /metrics does not serve: {missing:?}\nserved: {served:?}");
    assert!(server.terminate().success());
}
