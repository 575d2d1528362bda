//! `emostream load`: a simulated audience against a running pipeline, verified exactly, with
//! throughput and latency figures.
//!
//! A run has four phases:
//! 1. **viewers**: `--clients` viewers subscribe and open their streams ([`viewers`]);
//! 2. **send**: from the first window boundary after all are connected (W0), `--senders` of them
//!    send emojis for `--duration` over a pool of pipelined connections ([`senders`]);
//! 3. **drain**: the run waits until every viewer has the window after the one holding the last
//!    ack, plus one more (Wend), so late events are in;
//! 4. **verdict**: [`verify`] checks the windows and the counts; [`report`] prints the figures.

pub mod config;
pub mod report;
pub mod senders;
pub mod verify;
pub mod viewers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use config::{Bursts, LoadConfig, LoadTransport, Mix, parse_bursts, parse_mix};

use crate::stages::now_ms;
use report::{Phase, Summary};
use senders::{Live, SendPlan, SendResult};
use verify::{Expect, ViewerLog};
use viewers::{Shared, ViewerSpec};

#[derive(Deserialize)]
struct Subscribed {
    stream_path: String,
    ws_path: String,
    #[serde(default)]
    stream_url: Option<String>,
    #[serde(default)]
    ws_url: Option<String>,
}

#[derive(Deserialize, Default)]
struct Stats {
    #[serde(default)]
    window_ms: i64,
    #[serde(default)]
    subscribers: u32,
}

fn trim_base(s: &str) -> String {
    s.trim_end_matches('/').to_string()
}

/// Runs a load test.
///
/// # Errors
/// When the APIs cannot be reached, and when verification fails (after printing the report), so the
/// exit status says so.
pub async fn run(args: LoadConfig) -> Result<()> {
    if let Err(e) = crate::sys::raise_nofile_limit() {
        eprintln!("warning: cannot raise the open-files limit: {e}");
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be 0 (as fast as possible) or a positive number of emojis per second, got {}", args.rate);
    }
    if args.clients > 0 && args.senders > args.clients {
        bail!("--senders ({}) must not exceed --clients ({}): senders are viewers that also send", args.senders, args.clients);
    }
    let (api, ingest) = (trim_base(&args.api), trim_base(&args.ingest));
    let ingest_authority = viewers::split_url(&ingest)
        .filter(|_| ingest.starts_with("http://"))
        .map(|(a, _)| a.to_string())
        .with_context(|| format!("--ingest {ingest:?} must be an http:// URL"))?;
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let seed = args.seed.unwrap_or_else(rand::random);
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let mut summary = Summary::new(&args);
    let server_rss_idle = args.server_pid.and_then(crate::sys::rss_kib);

    // The window size: from the API when it tells, else from the first window a viewer gets.
    let stats: Stats = match http.get(format!("{api}/stats")).send().await {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
        _ => Stats::default(),
    };
    if args.clients > 0 && args.cluster.is_some() && stats.subscribers == 0 {
        eprintln!("note: the API did not say how many subscribers a cluster has; using subscriber 1 only");
    }

    // Phase 1: viewers subscribe, then connect.
    let ids: Vec<String> =
        (0..args.clients.max(if args.clients == 0 { args.senders } else { 0 })).map(|i| format!("load-{run_id}-{i}")).collect();
    let shared = Arc::new(Shared::default());
    let stop_viewers = CancellationToken::new();
    let mut handles = Vec::with_capacity(args.clients);
    if args.clients > 0 {
        let t0 = std::time::Instant::now();
        let subs = futures::stream::iter(ids.iter().take(args.clients).enumerate().map(|(i, id)| {
            let http = http.clone();
            let api = api.clone();
            let mut body = serde_json::json!({ "client_id": id });
            if let Some(c) = args.cluster {
                body["cluster_id"] = c.into();
                body["subscriber_id"] = (i as u32 % stats.subscribers.max(1) + 1).into();
            }
            async move {
                let r = http
                    .post(format!("{api}/subscribe"))
                    .json(&body)
                    .send()
                    .await
                    .with_context(|| format!("cannot reach the API at {api} (is `emostream up` running? see --api)"))?;
                if !r.status().is_success() {
                    let status = r.status();
                    bail!("POST /subscribe refused ({status}): {}", r.text().await.unwrap_or_default());
                }
                r.json::<Subscribed>().await.context("unexpected answer to POST /subscribe")
            }
        }))
        .buffered(32)
        .collect::<Vec<_>>()
        .await;
        summary.server_rss_subscribed_kib = args.server_pid.and_then(crate::sys::rss_kib);
        let ws_base = api.replacen("http", "ws", 1);
        let connecting = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
        for (i, (id, sub)) in ids.iter().zip(subs).enumerate() {
            let sub = sub?;
            let ws = match args.transport {
                LoadTransport::Sse => false,
                LoadTransport::Ws => true,
                LoadTransport::Mixed => i % 2 == 1,
            };
            let url = if ws {
                sub.ws_url.unwrap_or_else(|| format!("{ws_base}{}", sub.ws_path))
            } else {
                sub.stream_url.unwrap_or_else(|| format!("{api}{}", sub.stream_path))
            };
            let spec = ViewerSpec { id: id.clone(), url, ws };
            handles.push(tokio::spawn(viewers::run(spec, shared.clone(), connecting.clone(), stop_viewers.clone())));
        }
        let deadline = tokio::time::Instant::now() + args.timeout + Duration::from_millis(args.clients as u64);
        loop {
            let (c, f) = (shared.connected.load(Ordering::Relaxed), shared.failed.load(Ordering::Relaxed));
            if c + f >= args.clients {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                eprintln!("warning: only {c} of {} viewers connected ({f} failed) before the timeout", args.clients);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        summary.connect_s = t0.elapsed().as_secs_f64();
        let f = shared.failed.load(Ordering::Relaxed);
        if f > 0 {
            eprintln!("warning: {f} viewers could not connect");
        }
    }
    summary.clients_connected = shared.connected.load(Ordering::Relaxed);

    let mut window_ms = stats.window_ms;
    if args.clients > 0 && window_ms <= 0 {
        let deadline = tokio::time::Instant::now() + args.timeout;
        while shared.latest.load(Ordering::Relaxed) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        window_ms = shared.size_ms.load(Ordering::Relaxed);
        if window_ms <= 0 {
            bail!("cannot tell the window size: GET {api}/stats did not say and no window arrived");
        }
    }
    summary.window_ms = window_ms;

    if !args.hold.is_zero() {
        tokio::time::sleep(args.hold).await;
    }
    if args.clients > 0 {
        // Let the server settle its buffers before measuring its memory.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let server_rss_connected = args.server_pid.and_then(crate::sys::rss_kib);

    // Phase 2: send from the first window boundary after every viewer connected.
    let w0 = if window_ms > 0 { (now_ms() + window_ms - 1).div_euclid(window_ms) * window_ms } else { now_ms() };
    if args.senders > 0 && window_ms > 0 {
        let wait = (w0 - now_ms()).max(0);
        tokio::time::sleep(Duration::from_millis(wait as u64 + 1)).await;
    }
    let baseline: u64 = shared.windows.lock().expect("poisoned").range(..w0).map(|(_, w)| w.counts.values().sum::<u64>()).sum();

    let live = Arc::new(Live::default());
    let server_cpu0 = args.server_pid.and_then(crate::sys::cpu_seconds);
    let load_cpu0 = crate::sys::cpu_seconds(std::process::id());
    let started = tokio::time::Instant::now();
    let mut result = SendResult::default();
    let stop_progress = CancellationToken::new();
    let progress = tokio::spawn(report::progress(live.clone(), shared.clone(), args.clients, stop_progress.clone()));
    if args.senders > 0 {
        let senders_ids = Arc::new(ids.iter().take(args.senders).cloned().collect::<Vec<_>>());
        let batch = f64::from(args.batch);
        let plan = Arc::new(SendPlan {
            authority: ingest_authority,
            batch: args.batch,
            request_rate: args.rate * args.senders as f64 / batch,
            bursts: args.burst.clone().unwrap_or_default(),
            duration: args.duration,
            connections: args.connections,
            depth: args.concurrency,
            mix: args.mix.clone(),
            sender_ids: senders_ids,
            window_ms,
            seed,
        });
        let conns: Vec<_> =
            (0..args.connections).map(|i| tokio::spawn(senders::run_connection(plan.clone(), i, started, live.clone()))).collect();
        for c in conns {
            result.merge(c.await.context("a sender task failed")?);
        }
    } else {
        tokio::time::sleep(args.duration).await;
    }
    let send_secs = started.elapsed().as_secs_f64();
    let server_cpu = args.server_pid.and_then(crate::sys::cpu_seconds).zip(server_cpu0).map(|(b, a)| b - a);
    let load_cpu = crate::sys::cpu_seconds(std::process::id()).zip(load_cpu0).map(|(b, a)| b - a);

    // Phase 3: wait until every viewer has Wend.
    let last = if result.last_ack_us > 0 { result.last_ack_us / 1000 } else { now_ms() };
    let wend = if window_ms > 0 { last.max(w0).div_euclid(window_ms) * window_ms + 2 * window_ms } else { 0 };
    if args.clients > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(((wend - now_ms()).max(0) + window_ms) as u64) + args.timeout;
        loop {
            let got = shared.windows.lock().expect("poisoned").get(&wend).map_or(0, |w| w.receipts);
            if got >= shared.connected.load(Ordering::Relaxed) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                eprintln!("warning: gave up waiting for window {wend}: {got} viewers have it");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop_progress.cancel();
    let timeline = progress.await.unwrap_or_default();
    stop_viewers.cancel();
    let mut logs: Vec<ViewerLog> = Vec::with_capacity(handles.len());
    for h in handles {
        logs.push(h.await.context("a viewer task failed")?);
    }
    let windows_seen: BTreeMap<i64, viewers::WindowSeen> = std::mem::take(&mut *shared.windows.lock().expect("poisoned"));

    // Phase 4: the verdict.
    let acked: BTreeMap<String, u64> =
        args.mix.0.iter().zip(result.acked.iter().chain(std::iter::repeat(&0))).map(|(m, n)| (m.0.clone(), *n)).collect();
    let count_check = !args.no_count_check && result.unanswered == 0 && result.partial_batches == 0;
    let mut verdict = if args.clients > 0 {
        let counts: BTreeMap<i64, BTreeMap<String, u64>> = windows_seen.iter().map(|(k, w)| (*k, w.counts.clone())).collect();
        verify::verify(&logs, &counts, &Expect { size_ms: window_ms, from: w0, to: wend, acked: count_check.then(|| acked.clone()) })
    } else {
        verify::Verdict { pass: true, ..Default::default() }
    };
    if result.unanswered > 0 {
        verdict.problems.push(format!("{} requests got no answer (connection lost): their outcome is unknown", result.unanswered));
        verdict.pass = false;
    }
    if result.partial_batches > 0 {
        verdict.problems.push(format!("{} batches were partly refused", result.partial_batches));
        verdict.pass = false;
    }

    summary.fill(report::Filled {
        verdict: &verdict,
        result: &result,
        logs: &logs,
        windows: &windows_seen,
        w0,
        wend,
        baseline,
        send_secs,
        phase: Phase {
            server_cpu_s: server_cpu,
            load_cpu_s: load_cpu,
            server_rss_idle_kib: server_rss_idle,
            server_rss_connected_kib: server_rss_connected,
        },
        timeline,
        counts_checked: count_check && args.clients > 0,
    });
    summary.set_accepted_by_emoji(acked);
    if args.json {
        crate::say!("{}", summary.to_json(args.detail));
    } else {
        summary.print_table();
    }

    // Leave the registry as we found it.
    if args.clients > 0 {
        let _ = futures::stream::iter(ids.iter().take(args.clients).map(|id| {
            let (http, api) = (http.clone(), api.clone());
            async move { http.post(format!("{api}/unsubscribe")).json(&serde_json::json!({ "client_id": id })).send().await }
        }))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    }
    if !verdict.pass {
        bail!("verification FAILED ({} problems; see above)", verdict.problems.len());
    }
    Ok(())
}
