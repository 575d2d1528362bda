//! What an operator sees of `emostream up` on a pipe: no panic when stdout closes, plain or JSON log
//! lines on stderr, no colour codes off a terminal.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `up` on free ports with `stdout` as given and stderr piped; returns it and its API's URL
/// once `/healthz` answers.
async fn up(extra: &[&str], stdout: Stdio) -> (Child, String) {
    up_on(free_port(), free_port(), extra, stdout).await
}

async fn up_on(ingest: u16, api: u16, extra: &[&str], stdout: Stdio) -> (Child, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_emostream"))
        .args(["up", "--ingest-addr", &format!("127.0.0.1:{ingest}"), "--api-addr", &format!("127.0.0.1:{api}")])
        .args(extra)
        .env_remove("EMOSTREAM_KAFKA")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{api}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{url}/healthz")).await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "emostream up did not answer /healthz");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, url)
}

/// SIGTERM, then the exit status and everything it wrote to stderr.
fn stop(mut child: Child) -> (std::process::ExitStatus, String) {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (child.wait().unwrap(), err)
}

#[tokio::test]
async fn a_closed_stdout_does_not_stop_the_server() {
    // `emostream up | head -1`: the reader is gone before the banner is written.
    let (mut child, api) = up(&[], Stdio::piped()).await;
    drop(child.stdout.take());
    // It keeps serving after its stdout closed…
    let r = reqwest::Client::new()
        .post(format!("{api}/subscribe"))
        .json(&serde_json::json!({"client_id": "after-epipe"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // …and stops cleanly, without a panic.
    let (status, err) = stop(child);
    assert!(status.success(), "clean exit on SIGTERM: {status}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test]
async fn logs_on_a_pipe_have_no_colour_codes_and_json_logs_are_one_object_per_line() {
    let (child, _) = up(&[], Stdio::null()).await;
    let (status, text) = stop(child);
    assert!(status.success());
    assert!(text.lines().any(|l| l.contains("INFO")), "info lines logged:\n{text}");
    assert!(!text.contains('\u{1b}'), "no ANSI escape codes off a terminal:\n{text}");

    let (child, _) = up(&["--log-format", "json"], Stdio::null()).await;
    let (status, json) = stop(child);
    assert!(status.success());
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "json lines logged");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}"));
        assert!(v["level"].is_string() && v["message"].is_string() && v["timestamp"].is_string(), "{l}");
    }
}

#[test]
fn a_bad_log_format_names_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_emostream")).args(["up", "--log-format", "xml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-format"));
}

#[tokio::test]
async fn readyz_turns_not_ready_at_sigterm_before_the_drain() {
    let (child, api) = up(&["--drain-delay", "10s"], Stdio::null()).await;
    let get = |url: String| async move {
        let r = reqwest::get(url).await.unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(get(format!("{api}/livez")).await, (200, serde_json::json!({"status": "live"})));
    assert_eq!(get(format!("{api}/readyz")).await, (200, serde_json::json!({"status": "ready"})));

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    // Not ready from the signal on, while everything still serves for the drain delay.
    let deadline = Instant::now() + Duration::from_secs(8);
    let (status, body) = loop {
        let (s, b) = get(format!("{api}/readyz")).await;
        if s != 200 || Instant::now() > deadline {
            break (s, b);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not ready");
    assert!(body["reasons"][0].as_str().unwrap().contains("shutting down"), "{body}");
    assert_eq!(get(format!("{api}/livez")).await.0, 200, "still live while draining");
    let r = reqwest::Client::new().post(format!("{api}/subscribe")).json(&serde_json::json!({"client_id": "late"})).send().await.unwrap();
    assert_eq!(r.status(), 200, "still serving while draining");
    let (status, err) = stop(child);
    assert!(status.success(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_subscribes_again_after_an_embedded_restart() {
    use tokio::io::AsyncBufReadExt;
    let (ingest, api) = (free_port(), free_port());
    let (server, api_url) = up_on(ingest, api, &["--window", "500ms", "--grace", "100ms"], Stdio::null()).await;
    let mut client = tokio::process::Command::new(env!("CARGO_BIN_EXE_emostream"))
        .args(["client", "--client-id", "phoenix", "--rate", "5", "--emojis", "😂", "--duration", "120s"])
        .args(["--api", &api_url, "--ingest", &format!("http://127.0.0.1:{ingest}")])
        .env_remove("EMOSTREAM_KAFKA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(client.stdout.take().unwrap()).lines();
    let mut next_line =
        async move || tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.expect("the client printed").unwrap();
    // A window line shows the swarm, the total and the mood.
    let window = loop {
        let l = next_line().await.expect("the client runs");
        if l.contains("(total ") && l.contains("😂") {
            break l;
        }
    };
    assert!(window.contains("mood +"), "the mood beside the swarm: {window}");

    // The embedded server restarts on the same ports and has forgotten every subscription.
    let (status, _) = stop(server);
    assert!(status.success());
    let (server, _) = up_on(ingest, api, &["--window", "500ms", "--grace", "100ms"], Stdio::null()).await;
    let mut said = Vec::new();
    loop {
        let l = next_line().await.unwrap_or_else(|| panic!("the client ended instead of subscribing again: {said:?}"));
        if l.contains("(total ") && l.contains("😂") && said.iter().any(|s: &String| s.contains("subscribed again")) {
            break;
        }
        said.push(l);
    }
    assert!(said.iter().any(|l| l.contains("no longer knows phoenix")), "{said:?}");
    let subs: serde_json::Value = reqwest::get(format!("{api_url}/subscriptions")).await.unwrap().json().await.unwrap();
    assert!(subs.to_string().contains("phoenix"), "subscribed again on the new server: {subs}");
    client.kill().await.unwrap();
    stop(server);
}
