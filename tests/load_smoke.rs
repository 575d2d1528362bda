//! `emostream load` against the real binary: a clean run verifies, and a run with a sender it does not
//! know about fails the count check with a non-zero exit status.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::Server;
use serde_json::Value;

fn load(ingest: &str, api: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emostream"))
        .args(["load", "--ingest", ingest, "--api", api, "--json", "--timeout", "10s"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run emostream load")
}

fn json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: stdout {stdout:?} stderr {}", String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_load_run_verifies_every_window_and_count() {
    let s = Server::start(&["--window", "500ms", "--clusters", "2", "--subscribers", "2"]).await;
    let (ingest, api) = (s.ingest.clone(), s.api.clone());
    let out = tokio::task::spawn_blocking(move || {
        load(&ingest, &api, &["--clients", "8", "--senders", "4", "--rate", "100", "--duration", "2s", "--transport", "mixed"])
    })
    .await
    .unwrap();
    let v = json(&out);
    assert!(out.status.success(), "exit {:?}: {v}", out.status);
    assert_eq!(v["verified"], true, "{v}");
    let (accepted, counted) = (v["accepted"].as_u64().unwrap(), v["counted"].as_u64().unwrap());
    assert!(accepted > 0, "{v}");
    assert_eq!(accepted, counted, "{v}");
    assert_eq!(v["clients"], 8);
    assert!(v["windows"].as_u64().unwrap() >= 4, "{v}");
    for k in ["requests_per_s", "emojis_per_s", "delivery_p50_ms", "delivery_p99_ms"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_sender_makes_the_count_check_fail() {
    let s = Server::start(&["--window", "500ms"]).await;
    let (ingest, api) = (s.ingest.clone(), s.api.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let intruder = tokio::spawn({
        let (ingest, stop) = (ingest.clone(), stop.clone());
        async move {
            let http = reqwest::Client::new();
            while !stop.is_cancelled() {
                let _ =
                    http.post(format!("{ingest}/emoji")).json(&serde_json::json!({"emoji": "😂", "client_id": "intruder"})).send().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let out =
        tokio::task::spawn_blocking(move || load(&ingest, &api, &["--clients", "3", "--senders", "1", "--rate", "20", "--duration", "1s"]))
            .await
            .unwrap();
    stop.cancel();
    intruder.await.unwrap();
    let v = json(&out);
    assert!(!out.status.success(), "a count mismatch must exit non-zero: {v}");
    assert_eq!(v["verified"], false);
    assert!(v["counted"].as_u64().unwrap() > v["accepted"].as_u64().unwrap(), "{v}");
    let problems = v["problems"].to_string();
    assert!(problems.contains("were acked"), "{problems}");
}
