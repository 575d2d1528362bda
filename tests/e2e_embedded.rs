//! End-to-end tests of the embedded pipeline: the real binary, real HTTP, SSE and WebSocket clients.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn add(acked: &mut BTreeMap<String, u64>, emoji: &str, n: u64) {
    *acked.entry(emoji.to_string()).or_default() += n;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_emoji_is_counted_once_and_every_client_sees_the_same_windows() {
    let mut server = Server::start(&["--window", "500ms", "--grace", "100ms"]).await;
    let api = server.api.clone();
    let ws_base = api.replacen("http", "ws", 1);

    // Clients on different clusters and subscribers, over both transports and every subscribe form.
    let a = subscribe(&api, json!({"client_id": "sse-11", "subscription_key": "11"})).await;
    let b = subscribe(&api, json!({"client_id": "ws-23", "cluster_id": 2, "subscriber_id": 3})).await;
    let c = subscribe(&api, json!({"client_id": "sse-32", "cluster_id": "3", "subscriber_id": "2"})).await;
    let d = subscribe(&api, json!({"client_id": "ws-auto"})).await;
    assert_eq!(b["subscription_key"], "23");
    assert_eq!(c["subscription_key"], "32");
    assert_ne!(d["subscription_key"], "11", "auto placement avoids a loaded subscriber");
    let subs: Value = reqwest::get(format!("{api}/subscriptions")).await.unwrap().json().await.unwrap();
    assert_eq!(subs["11"], json!(["sse-11"]));
    assert_eq!(subs["23"], json!(["ws-23"]));

    let mut clients = vec![
        ("sse-11", sse_client(format!("{api}{}", a["stream_path"].as_str().unwrap()))),
        ("ws-23", ws_client(format!("{ws_base}{}", b["ws_path"].as_str().unwrap()))),
        ("sse-32", sse_client(format!("{api}{}", c["stream_path"].as_str().unwrap()))),
        ("ws-auto", ws_client(format!("{ws_base}{}", d["ws_path"].as_str().unwrap()))),
    ];
    for (_, (rx, _)) in &mut clients {
        wait_for(rx, 1).await;
    }

    let ingest = server.ingest.clone();
    let mut acked = BTreeMap::new();
    // Single events in the original's field names…
    for i in 0..30 {
        let (s, v) = post_json(&format!("{ingest}/emoji"), &json!({"emoji": "😀", "client_id": format!("u{i}")})).await;
        assert_eq!((s, v), (200, json!({"message": "Emoji received"})));
        add(&mut acked, "😀", 1);
    }
    // …and the course spec's, with every timestamp form.
    let stamps = [json!(1_700_000_000), json!(1_700_000_000.25), json!(1_700_000_000_123_i64), json!("2024-11-20T10:15:00Z"), Value::Null];
    for i in 0..20 {
        let mut ev = json!({"emoji_type": "😂", "user_id": format!("u{i}")});
        if !stamps[i % 5].is_null() {
            ev["timestamp"] = stamps[i % 5].clone();
        }
        let (s, _) = post_json(&format!("{ingest}/emoji"), &ev).await;
        assert_eq!(s, 200, "{ev}");
        add(&mut acked, "😂", 1);
    }
    // A JSON array batch with two bad items.
    let mut batch: Vec<Value> = (0..500).map(|i| json!({"emoji": if i % 2 == 0 { "👍" } else { "❤️" }, "client_id": "b"})).collect();
    batch.insert(7, json!({"emoji": "🦄", "client_id": "b"}));
    batch.insert(9, json!({"emoji": "👍"}));
    let (s, v) = post_json(&format!("{ingest}/emojis"), &Value::Array(batch)).await;
    assert_eq!(s, 200);
    assert_eq!(v["accepted"], 500);
    assert_eq!(v["rejected"], 2);
    assert_eq!(v["errors"][0]["index"], 7);
    assert_eq!(v["errors"][1]["index"], 9);
    assert!(v["errors"][1]["error"].as_str().unwrap().contains("client_id"));
    add(&mut acked, "👍", 250);
    add(&mut acked, "❤️", 250);
    // NDJSON with a heart without its variation selector (the same emoji) and a bad line.
    let mut nd = String::new();
    for i in 0..300 {
        nd.push_str(&format!("{{\"emoji\":\"{}\",\"client_id\":\"n{i}\"}}\n", if i % 3 == 0 { "❤" } else { "😍" }));
    }
    nd.push_str("{not json}\n");
    let (s, v) = post_raw(&format!("{ingest}/emojis"), "application/x-ndjson", nd.into_bytes()).await;
    assert_eq!(s, 200);
    assert_eq!((v["accepted"].as_u64(), v["rejected"].as_u64()), (Some(300), Some(1)));
    assert_eq!(v["errors"][0]["index"], 300);
    add(&mut acked, "❤️", 100);
    add(&mut acked, "😍", 200);
    // Phones' skin-tone variants count as their base emoji (`--skin-tones fold`, the default).
    let toned: Vec<Value> = (0..100).map(|i| json!({"emoji": if i < 40 { "👍🏽" } else { "👏🏿" }, "client_id": format!("t{i}")})).collect();
    let (s, v) = post_json(&format!("{ingest}/emojis"), &Value::Array(toned)).await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(100)), "{v}");
    add(&mut acked, "👍", 40);
    add(&mut acked, "👏", 60);
    // Bad single events: answered, counted nowhere; the error shows the emoji itself.
    let (s, v) = post_json(&format!("{ingest}/emoji"), &json!({"emoji": "🦄", "client_id": "x"})).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("emoji “🦄” is not in the accepted set"), "{v}");

    let metrics = reqwest::get(format!("{api}/metrics")).await.unwrap().text().await.unwrap();
    let acked_total: u64 = acked.values().sum();
    assert!(metrics.contains(&format!("emostream_events_accepted_total {acked_total}")), "{metrics}");
    assert!(metrics.contains("emostream_events_rejected_total{reason=\"unknown_emoji\"} 2"), "{metrics}");
    assert!(metrics.contains("emostream_connected_clients{subscriber=\"11\"} 1"), "{metrics}");
    assert!(metrics.contains(&format!("emostream_build_info{{version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{metrics}");
    assert!(metrics.contains("process_resident_memory_bytes ") && metrics.contains("process_cpu_seconds_total "), "{metrics}");
    // One scrape per process: the ingest port of `up` points to the API's.
    let r = reqwest::get(format!("{ingest}/metrics")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("--api-addr"));

    // Let a few windows pass, then stop: shutdown publishes what is held before closing streams.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Emotions, mood, trend and surges are exactly what the core computes from the counts, window by
    // window since the first (the Kafka tests check the same over Kafka and across a publisher restart).
    let all: Value = reqwest::get(format!("{api}/windows?limit=100000")).await.unwrap().json().await.unwrap();
    common::emotions::assert_recomputed(all["windows"].as_array().unwrap(), "embedded");
    assert!(server.terminate().success(), "clean exit on SIGTERM");

    let mut received = Vec::new();
    for (name, (_, h)) in clients {
        let windows = tokio::time::timeout(Duration::from_secs(10), h).await.expect("stream ends after shutdown").unwrap();
        assert_consecutive(&windows, 500, name);
        assert_eq!(
            totals(&windows).into_iter().filter(|(_, n)| *n > 0).collect::<BTreeMap<_, _>>(),
            acked,
            "{name}: counts over its windows equal what was acked"
        );
        for w in &windows {
            let sum: u64 = w["swarm"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
            if w["total"].as_u64().unwrap() > 0 {
                assert!((4..4 + 7).contains(&sum), "normalize:4 shows 4 plus rounding: {w}");
                let mood = w["mood"].as_f64().expect("mood of a window with emojis");
                assert!((-1.0..=1.0).contains(&mood), "{w}");
            }
            // Every default emoji has an emotion: the emotion counts add up to the total.
            let by_emotion: u64 = w["emotions"].as_object().expect("emotions").values().map(|v| v.as_u64().unwrap()).sum();
            assert_eq!(by_emotion, w["total"].as_u64().unwrap(), "{w}");
            assert!(w["trend"].is_object() && w["surges"].is_array(), "{w}");
        }
        received.push((name, windows));
    }
    // Identical windows at every client over the range all of them saw.
    let common_start = received.iter().map(|(_, w)| w[0]["window_start"].as_i64().unwrap()).max().unwrap();
    let slices: Vec<(&str, Vec<&Value>)> =
        received.iter().map(|(n, w)| (*n, w.iter().filter(|w| w["window_start"].as_i64().unwrap() >= common_start).collect())).collect();
    for (name, s) in &slices[1..] {
        assert_eq!(s, &slices[0].1, "{name} and {} saw different windows", slices[0].0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_ends_the_clients_streams() {
    let server = Server::start(&["--window", "200ms"]).await;
    let api = server.api.clone();
    subscribe(&api, json!({"client_id": "leaver"})).await;
    let (mut rx1, sse) = sse_client(format!("{api}/stream/leaver"));
    let (mut rx2, ws) = ws_client(format!("{}/ws/leaver", api.replacen("http", "ws", 1)));
    wait_for(&mut rx1, 1).await;
    wait_for(&mut rx2, 1).await;
    let (s, v) = post_json(&format!("{api}/unsubscribe"), &json!({"client_id": "leaver"})).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["subscriptions"].as_object().unwrap().is_empty());
    tokio::time::timeout(Duration::from_secs(3), sse).await.expect("SSE stream ends").unwrap();
    tokio::time::timeout(Duration::from_secs(3), ws).await.expect("WebSocket closes").unwrap();
    // Gone for good: no stream, no second unsubscribe.
    let r = reqwest::get(format!("{api}/stream/leaver")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("not subscribed"));
    let (s, _) = post_json(&format!("{api}/unsubscribe"), &json!({"client_id": "leaver"})).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let server = Server::start(&["--window", "200ms", "--max-body", "1KiB"]).await;
    let (ingest, api) = (server.ingest.clone(), server.api.clone());
    let url = format!("{ingest}/emoji");
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"emoji\": ".to_vec(), 400, "invalid JSON"),
        (b"\xff\xfe{}".to_vec(), 400, "invalid JSON"),
        (br#"{"emoji": 5, "client_id": "c"}"#.to_vec(), 400, "field `emoji` must be a string"),
        (br#"{"emoji": "\u00f0\u009f\u0098\u0080", "client_id": 7}"#.to_vec(), 400, "not in the accepted set"),
        (r#"{"emoji": "😀", "client_id": 7}"#.as_bytes().to_vec(), 400, "field `client_id` must be a string"),
        (br#"{"client_id": "c"}"#.to_vec(), 400, "missing field `emoji`"),
        (r#"{"emoji": "😀"}"#.as_bytes().to_vec(), 400, "missing field `client_id`"),
        (r#"{"emoji": "😀", "client_id": ""}"#.as_bytes().to_vec(), 400, "must not be empty"),
        (format!(r#"{{"emoji": "😀", "client_id": "{}"}}"#, "x".repeat(65)).into_bytes(), 400, "limit is 64"),
        (r#"{"emoji": "😀", "client_id": "c", "timestamp": "soon"}"#.as_bytes().to_vec(), 400, "field `timestamp`"),
        (b"[]".to_vec(), 400, "must be a JSON object"),
        (format!(r#"{{"emoji": "😀", "client_id": "c", "pad": "{}"}}"#, "x".repeat(2000)).into_bytes(), 413, "size limit"),
    ];
    for (body, status, needle) in cases {
        let (s, v) = post_raw(&url, "application/json", body.clone()).await;
        assert_eq!(s, status, "{}: {v}", String::from_utf8_lossy(&body));
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("JSON error body for {}", String::from_utf8_lossy(&body)));
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    }
    // Batches: not an array, too many events.
    let (s, v) = post_raw(&format!("{ingest}/emojis"), "application/json", br#"{"emoji":"x"}"#.to_vec()).await;
    assert_eq!(s, 400, "{v}");
    let many: Vec<Value> = (0..10_001).map(|_| json!({"emoji": "😀", "client_id": "c"})).collect();
    let (s, v) = post_json(&format!("{ingest}/emojis"), &Value::Array(many)).await;
    assert_eq!(s, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("10000"));
    // The API refuses bad subscriptions and queries the same way.
    for body in
        [json!({"client_id": "c", "subscription_key": "47"}), json!({"subscription_key": "11"}), json!({"client_id": "c", "cluster_id": 1})]
    {
        let (s, v) = post_json(&format!("{api}/subscribe"), &body).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(v["error"].is_string());
    }
    let (s, v) = post_raw(&format!("{api}/subscribe"), "application/json", b"{".to_vec()).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("JSON"));
    let r = reqwest::get(format!("{api}/windows?limit=lots")).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = reqwest::get(format!("{api}/nope")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = reqwest::get(format!("{ingest}/emoji")).await.unwrap();
    assert_eq!(r.status(), 405);

    // Still serving, and none of the above was counted: one good event is the only count.
    let (s, _) = post_json(&url, &json!({"emoji": "😀", "client_id": "c"})).await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let w: Value = reqwest::get(format!("{api}/windows?limit=1000")).await.unwrap().json().await.unwrap();
    assert_eq!(totals(w["windows"].as_array().unwrap()), [("😀".to_string(), 1)].into_iter().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_answers_503_and_keeps_every_acked_event() {
    // Appends every 2 s at most; room for 5 events in between.
    let mut server = Server::start(&["--window", "500ms", "--buffer", "5", "--linger", "2s"]).await;
    let api = server.api.clone();
    subscribe(&api, json!({"client_id": "watch"})).await;
    let (mut rx, h) = sse_client(format!("{api}/stream/watch"));
    wait_for(&mut rx, 1).await;
    let (mut ok, mut busy) = (0u64, 0u64);
    for _ in 0..20 {
        let (s, v) = post_json(&format!("{}/emoji", server.ingest), &json!({"emoji": "👍", "client_id": "c"})).await;
        match s {
            200 => ok += 1,
            503 => {
                busy += 1;
                assert!(v["error"].as_str().unwrap().contains("buffer is full"), "{v}");
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    assert!(busy > 0 && ok >= 5, "ok {ok}, busy {busy}");
    assert!(server.terminate().success());
    let windows = h.await.unwrap();
    assert_eq!(totals(&windows).get("👍").copied().unwrap_or(0), ok, "every 200 is counted, no 503 is");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_acks_are_all_counted() {
    let mut server = Server::start(&["--window", "300ms", "--ack", "durable"]).await;
    let api = server.api.clone();
    subscribe(&api, json!({"client_id": "watch"})).await;
    let (mut rx, h) = sse_client(format!("{api}/stream/watch"));
    wait_for(&mut rx, 1).await;
    let url = format!("{}/emoji", server.ingest);
    let sends = (0..64).map(|i| {
        let url = url.clone();
        tokio::spawn(async move { post_json(&url, &json!({"emoji": "🔥", "client_id": format!("d{i}")})).await.0 })
    });
    let statuses = futures::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s.as_ref().unwrap() == 200));
    assert!(server.terminate().success());
    assert_eq!(totals(&h.await.unwrap())["🔥"], 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_first_gets_the_latest_window() {
    let server = Server::start(&["--window", "1s"]).await;
    let api = server.api.clone();
    let latest = loop {
        let w: Value = reqwest::get(format!("{api}/windows?limit=1")).await.unwrap().json().await.unwrap();
        if let Some(w) = w["windows"].as_array().and_then(|a| a.first()).cloned() {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    subscribe(&api, json!({"client_id": "late-joiner"})).await;
    let started = std::time::Instant::now();
    let (mut rx, _h) = sse_client(format!("{api}/stream/late-joiner"));
    wait_for(&mut rx, 1).await;
    assert!(started.elapsed() < Duration::from_millis(900), "the latest window came at once, not at the next window");
    let w: Value = reqwest::get(format!("{api}/windows?from={}", latest["window_start"])).await.unwrap().json().await.unwrap();
    assert!(w["windows"][0]["window_start"] == latest["window_start"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscribe_answer_says_where_to_connect() {
    let server = Server::start(&["--window", "200ms"]).await;
    let api = server.api.clone();
    let v = subscribe(&api, json!({"client_id": "c 1", "subscription_key": "23"})).await;
    assert_eq!(v["stream_url"], format!("{api}/stream/c%201"), "{v}");
    assert_eq!(v["ws_url"], format!("{}/ws/c%201", api.replacen("http", "ws", 1)), "{v}");
    assert_eq!(v["stream_path"], "/stream/c%201", "embedded fields stay");
    // The URLs work as given.
    assert_eq!(sse_take(v["stream_url"].as_str().unwrap(), None, 1).await.len(), 1);
    assert_eq!(ws_take(v["ws_url"].as_str().unwrap(), 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_gets_exactly_the_windows_after_its_last_one() {
    let server = Server::start(&["--window", "200ms"]).await;
    let api = server.api.clone();
    let v = subscribe(&api, json!({"client_id": "resumer"})).await;
    let (stream_url, ws_url) = (v["stream_url"].as_str().unwrap().to_string(), v["ws_url"].as_str().unwrap().to_string());
    let first = sse_take(&stream_url, None, 3).await;
    assert_consecutive(&first, 200, "first connection");
    let last = first[2]["window_start"].as_i64().unwrap();
    // Away for a few windows, then back with Last-Event-ID: the missed windows first, then live ones.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let resumed = sse_take(&stream_url, Some(last), 6).await;
    assert_eq!(resumed[0]["window_start"].as_i64().unwrap(), last + 200, "no gap, no repeat: {resumed:?}");
    assert_consecutive(&resumed, 200, "resumed SSE");
    // The same over WebSocket with ?after=.
    let last = resumed[5]["window_start"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ws = ws_take(&format!("{ws_url}?after={last}"), 5).await;
    assert_eq!(ws[0]["window_start"].as_i64().unwrap(), last + 200, "{ws:?}");
    assert_consecutive(&ws, 200, "resumed WebSocket");
    // Without a resume point a connection starts at the latest window, as before.
    let fresh = sse_take(&stream_url, None, 1).await;
    assert!(fresh[0]["window_start"].as_i64().unwrap() > last + 600);
    let r = reqwest::Client::new().get(&stream_url).header("Last-Event-ID", "yesterday").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("Last-Event-ID"));
}

#[test]
fn cli_errors_name_the_flag() {
    for (args, needle) in [
        (vec!["up", "--window", "2fortnights"], "--window"),
        (vec!["up", "--scale", "avg:3"], "--scale"),
        (vec!["up", "--emojis", "😀,hello"], "--emojis"),
        (vec!["up", "--emojis", "§,→"], "“§” is not an emoji"),
        (vec!["up", "--skin-tones", "sometimes"], "--skin-tones"),
        (vec!["up", "--clusters", "0"], "--clusters"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_emostream")).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_skin_tones_are_their_own_emojis() {
    let mut server = Server::start(&["--skin-tones", "keep", "--emojis", "👍,👍🏽,😂"]).await;
    let url = format!("{}/emoji", server.ingest);
    assert_eq!(post_json(&url, &json!({"emoji": "👍🏽", "client_id": "a"})).await.0, 200);
    assert_eq!(post_json(&url, &json!({"emoji": "👍", "client_id": "a"})).await.0, 200);
    let (s, v) = post_json(&url, &json!({"emoji": "👍🏿", "client_id": "a"})).await;
    assert_eq!(s, 400, "a tone not listed is refused: {v}");
    assert!(v["error"].as_str().unwrap().contains("“👍🏿”"), "{v}");
    assert!(server.terminate().success());
    // Folded, 👍 and 👍🏽 are one emoji: listing both is a mistake, said at start-up.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emostream")).args(["up", "--emojis", "👍,👍🏽"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--skin-tones fold") && err.contains("“👍🏽” appears twice"), "{err}");
}

#[test]
fn distributed_stages_without_kafka_name_the_flag() {
    for args in [
        vec!["ingest"],
        vec!["aggregate", "--window", "1s"],
        vec!["publish"],
        vec!["cluster", "--id", "1"],
        vec!["subscriber", "--cluster", "1", "--id", "2"],
        vec!["registry"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_emostream")).args(&args).env_remove("EMOSTREAM_KAFKA").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--kafka") && err.contains(&format!("emostream {}", args[0])), "{args:?}: {err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emostream"))
        .args(["subscriber", "--id", "2", "--kafka", "127.0.0.1:9092"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster"));
}

#[test]
fn an_unreachable_kafka_is_reported_with_a_hint() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    for args in [vec!["aggregate"], vec!["subscriber", "--cluster", "1", "--id", "1"], vec!["up"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_emostream"))
            .args(&args)
            .args(["--kafka", "127.0.0.1:1", "--connect-timeout", "1s"])
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot reach the log at 127.0.0.1:1") && err.contains("scripts/kafka start"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_address_is_reported_with_its_flag() {
    let server = Server::start(&[]).await;
    let port = server.ingest.rsplit(':').next().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emostream"))
        .args(["up", "--ingest-addr", &format!("127.0.0.1:{port}"), "--api-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ingest-addr"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sends_watches_and_unsubscribes() {
    let server = Server::start(&["--window", "300ms"]).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_emostream"))
        .args(["client", "--client-id", "cli", "--cluster", "2", "--subscriber", "1", "--rate", "20", "--emojis", "😂", "--duration", "2s"])
        .args(["--api", &server.api, "--ingest", &server.ingest])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("subscribed to cluster 2 subscriber 1"), "{text}");
    assert!(text.lines().any(|l| l.contains("😂") && l.contains("(total ")), "{text}");
    assert!(text.contains("unsubscribed cli"), "{text}");
    let subs: Value = reqwest::get(format!("{}/subscriptions", server.api)).await.unwrap().json().await.unwrap();
    assert_eq!(subs, json!({}));
}
