//! Figures of a load run: the live progress line, the summary table and the `--json` object.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::config::{LoadConfig, LoadTransport};
use super::senders::{Live, SendResult};
use super::verify::{Verdict, ViewerLog};
use super::viewers::{Shared, WindowSeen};

/// One second of the run.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Sample {
    /// Seconds since sending started.
    pub t: f64,
    pub requests_per_s: f64,
    pub emojis_per_s: f64,
    pub errors: u64,
    pub viewers: usize,
    pub windows_received: u64,
}

/// Prints a progress line each second until `stop`; returns the samples.
pub async fn progress(live: Arc<Live>, shared: Arc<Shared>, clients: usize, stop: CancellationToken) -> Vec<Sample> {
    let tty = std::io::stderr().is_terminal();
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let (mut req0, mut emo0) = (0u64, 0u64);
    let mut last = start;
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let now = tokio::time::Instant::now();
        let dt = now.duration_since(last).as_secs_f64().max(1e-6);
        last = now;
        let (req, emo) = (live.requests_ok.load(Ordering::Relaxed), live.emojis_ok.load(Ordering::Relaxed));
        let s = Sample {
            t: now.duration_since(start).as_secs_f64(),
            requests_per_s: (req - req0) as f64 / dt,
            emojis_per_s: (emo - emo0) as f64 / dt,
            errors: live.errors.load(Ordering::Relaxed),
            viewers: shared.connected.load(Ordering::Relaxed),
            windows_received: shared.received.load(Ordering::Relaxed),
        };
        (req0, emo0) = (req, emo);
        let line = format!(
            "[{:>5.1}s] {:>10.0} req/s {:>11.0} emojis/s | viewers {}/{} | windows received {} | errors {}",
            s.t, s.requests_per_s, s.emojis_per_s, s.viewers, clients, s.windows_received, s.errors
        );
        if tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        out.push(s);
    }
    if tty {
        eprintln!();
    }
    out
}

/// Process figures around the send phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase {
    pub server_cpu_s: Option<f64>,
    pub load_cpu_s: Option<f64>,
    pub server_rss_idle_kib: Option<u64>,
    pub server_rss_connected_kib: Option<u64>,
}

/// Everything the summary is computed from.
pub struct Filled<'a> {
    pub verdict: &'a Verdict,
    pub result: &'a SendResult,
    pub logs: &'a [ViewerLog],
    pub windows: &'a BTreeMap<i64, WindowSeen>,
    pub w0: i64,
    pub wend: i64,
    pub baseline: u64,
    pub send_secs: f64,
    pub phase: Phase,
    pub timeline: Vec<Sample>,
    pub counts_checked: bool,
}

/// Latency percentiles in ms.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        samples: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// The results of a run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    pub verified: bool,
    pub problems: Vec<String>,
    /// Emojis acked with 200.
    pub accepted: u64,
    /// Sum of `counts` over windows W0..=Wend.
    pub counted: u64,
    pub counts_checked: bool,
    pub accepted_by_emoji: BTreeMap<String, u64>,
    pub counted_by_emoji: BTreeMap<String, u64>,
    pub requests_ok: u64,
    pub requests_per_s: f64,
    pub emojis_per_s: f64,
    pub errors_by_status: BTreeMap<String, u64>,
    pub io_errors: BTreeMap<String, u64>,
    pub unanswered: u64,
    pub delivery_p50_ms: f64,
    pub delivery_p90_ms: f64,
    pub delivery_p99_ms: f64,
    pub delivery_max_ms: f64,
    pub delivery_samples: u64,
    /// Send → first delivery of the window holding it (see `--help`).
    pub send_to_window_p50_ms: f64,
    pub send_to_window_p99_ms: f64,
    pub send_to_window_max_ms: f64,
    pub clients: usize,
    pub clients_connected: usize,
    pub connect_s: f64,
    pub senders: usize,
    pub windows: u64,
    pub window_ms: i64,
    pub w0: i64,
    pub wend: i64,
    /// Sum of `counts` in windows received before W0 (other traffic; not compared).
    pub baseline_total: u64,
    pub transport: String,
    pub batch: u32,
    pub rate: f64,
    pub connections: u32,
    pub concurrency: u32,
    pub duration_s: f64,
    pub send_s: f64,
    pub server_cpu_s: Option<f64>,
    pub load_cpu_s: Option<f64>,
    /// Share of the machine's CPU time the load generator used while sending.
    pub load_cpu_share: Option<f64>,
    pub server_rss_idle_kib: Option<u64>,
    /// After every viewer subscribed, before any stream opened: isolates the cost of the streams
    /// from the registry and the allocator's memory kept from the subscribe answers.
    pub server_rss_subscribed_kib: Option<u64>,
    pub server_rss_connected_kib: Option<u64>,
    /// (connected − idle) / viewers.
    pub server_rss_per_client_bytes: Option<f64>,
    /// (connected − subscribed) / viewers: what an open idle stream costs.
    pub server_rss_per_stream_bytes: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Sample>,
    /// (percentile, ms) pairs of the delivery latency distribution.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delivery_distribution: Vec<(f64, f64)>,
    #[serde(skip)]
    delivery_hist: Option<Histogram<u64>>,
}

impl Summary {
    pub fn new(args: &LoadConfig) -> Self {
        Self {
            clients: args.clients,
            senders: args.senders,
            transport: match args.transport {
                LoadTransport::Sse => "sse",
                LoadTransport::Ws => "ws",
                LoadTransport::Mixed => "mixed",
            }
            .into(),
            batch: args.batch,
            rate: args.rate,
            connections: args.connections,
            concurrency: args.concurrency,
            duration_s: args.duration.as_secs_f64(),
            ..Self::default()
        }
    }

    pub fn fill(&mut self, f: Filled<'_>) {
        let r = f.result;
        self.verified = f.verdict.pass;
        self.problems = f.verdict.problems.clone();
        self.accepted = r.acked.iter().sum();
        self.counted = f.verdict.counted;
        self.counted_by_emoji = f.verdict.counted_by_emoji.clone();
        self.counts_checked = f.counts_checked;
        self.requests_ok = r.requests_ok;
        self.send_s = f.send_secs;
        self.requests_per_s = r.requests_ok as f64 / f.send_secs.max(1e-9);
        self.emojis_per_s = self.accepted as f64 / f.send_secs.max(1e-9);
        self.errors_by_status = r.statuses.iter().filter(|(s, _)| **s != 200).map(|(s, n)| (s.to_string(), *n)).collect();
        self.io_errors = r.io_errors.clone();
        self.unanswered = r.unanswered;
        self.windows = f.verdict.windows;
        self.w0 = f.w0;
        self.wend = f.wend;
        self.baseline_total = f.baseline;
        self.server_cpu_s = f.phase.server_cpu_s;
        self.load_cpu_s = f.phase.load_cpu_s;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        self.load_cpu_share = f.phase.load_cpu_s.map(|c| c / (f.send_secs.max(1e-9) * cores));
        self.server_rss_idle_kib = f.phase.server_rss_idle_kib;
        self.server_rss_connected_kib = f.phase.server_rss_connected_kib;
        if let (Some(a), Some(b)) = (f.phase.server_rss_idle_kib, f.phase.server_rss_connected_kib)
            && self.clients_connected > 0
        {
            self.server_rss_per_client_bytes = Some((b as f64 - a as f64) * 1024.0 / self.clients_connected as f64);
        }
        if let (Some(a), Some(b)) = (self.server_rss_subscribed_kib, f.phase.server_rss_connected_kib)
            && self.clients_connected > 0
        {
            self.server_rss_per_stream_bytes = Some((b as f64 - a as f64) * 1024.0 / self.clients_connected as f64);
        }
        self.timeline = f.timeline;

        // Window close → delivery, over every viewer and every window of the checked range.
        let mut h = histogram();
        for l in f.logs {
            for w in &l.windows {
                if w.start >= f.w0 && w.start <= f.wend && w.closed_at > 0 {
                    let _ = h.record((w.recv_us - w.closed_at * 1000).max(1) as u64);
                }
            }
        }
        if !h.is_empty() {
            let p = percentiles(&h);
            (self.delivery_p50_ms, self.delivery_p90_ms, self.delivery_p99_ms, self.delivery_max_ms, self.delivery_samples) =
                (p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms, p.samples);
            self.delivery_distribution =
                h.iter_quantiles(1).map(|v| (v.quantile_iterated_to() * 100.0, v.value_iterated_to() as f64 / 1000.0)).collect();
            self.delivery_hist = Some(h);
        }

        // Send → first delivery of the window the send time falls in.
        let mut s = histogram();
        for (w, offsets) in &r.offsets {
            let Some(seen) = f.windows.get(w) else { continue };
            for (o, n) in offsets.iter().enumerate() {
                if *n > 0 {
                    let sent_us = (w + o as i64) * 1000;
                    let _ = s.record_n((seen.first_recv_us - sent_us).max(1) as u64, u64::from(*n));
                }
            }
        }
        if !s.is_empty() {
            let p = percentiles(&s);
            (self.send_to_window_p50_ms, self.send_to_window_p99_ms, self.send_to_window_max_ms) = (p.p50_ms, p.p99_ms, p.max_ms);
        }
    }

    pub fn set_accepted_by_emoji(&mut self, m: BTreeMap<String, u64>) {
        self.accepted_by_emoji = m;
    }

    /// One JSON object; `detail` keeps the timeline and the latency distribution.
    pub fn to_json(&self, detail: bool) -> String {
        let mut s = self.clone();
        if !detail {
            s.timeline.clear();
            s.delivery_distribution.clear();
        }
        serde_json::to_string(&s).expect("summary serializes")
    }

    pub fn print_table(&self) {
        let verdict = if self.verified { "PASS" } else { "FAIL" };
        crate::say!();
        crate::say!("emostream load: {verdict}");
        for p in &self.problems {
            crate::say!("  ✗ {p}");
        }
        crate::say!(
            "  {:<34} {}/{} ({}, {:.1} s to connect)",
            "viewers connected",
            self.clients_connected,
            self.clients,
            self.transport,
            self.connect_s
        );
        crate::say!(
            "  {:<34} {} at {}/s, batch {}, {} conns x {} in flight",
            "senders",
            self.senders,
            self.rate,
            self.batch,
            self.connections,
            self.concurrency
        );
        crate::say!("  {:<34} {:.0} req/s, {:.0} emojis/s over {:.2} s", "accepted", self.requests_per_s, self.emojis_per_s, self.send_s);
        crate::say!("  {:<34} {} emojis in {} requests", "acked with 200", self.accepted, self.requests_ok);
        if self.counts_checked {
            crate::say!(
                "  {:<34} {} (windows {}..={}, {} windows; baseline before W0: {})",
                "counted",
                self.counted,
                self.w0,
                self.wend,
                self.windows,
                self.baseline_total
            );
        } else {
            crate::say!("  {:<34} {} (not compared)", "counted", self.counted);
        }
        if !self.errors_by_status.is_empty() || !self.io_errors.is_empty() {
            crate::say!("  {:<34} {:?} {:?}", "errors", self.errors_by_status, self.io_errors);
        }
        if self.delivery_samples > 0 {
            crate::say!(
                "  {:<34} p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} deliveries)",
                "window close → delivery",
                self.delivery_p50_ms,
                self.delivery_p90_ms,
                self.delivery_p99_ms,
                self.delivery_max_ms,
                self.delivery_samples
            );
        }
        if self.send_to_window_p50_ms > 0.0 {
            crate::say!(
                "  {:<34} p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                "send → window delivered",
                self.send_to_window_p50_ms,
                self.send_to_window_p99_ms,
                self.send_to_window_max_ms
            );
        }
        if let (Some(l), Some(s)) = (self.load_cpu_s, self.server_cpu_s) {
            crate::say!(
                "  {:<34} load {:.1} s ({:.0}% of the machine), server {:.1} s",
                "CPU while sending",
                l,
                self.load_cpu_share.unwrap_or(0.0) * 100.0,
                s
            );
        } else if let Some(l) = self.load_cpu_s {
            crate::say!(
                "  {:<34} load {:.1} s ({:.0}% of the machine)",
                "CPU while sending",
                l,
                self.load_cpu_share.unwrap_or(0.0) * 100.0
            );
        }
        if let (Some(a), Some(b)) = (self.server_rss_idle_kib, self.server_rss_connected_kib) {
            crate::say!(
                "  {:<34} {} KiB idle, {} KiB subscribed, {} KiB connected ({:.0} B per viewer, {:.0} B per open stream)",
                "server RSS",
                a,
                self.server_rss_subscribed_kib.unwrap_or(0),
                b,
                self.server_rss_per_client_bytes.unwrap_or(0.0),
                self.server_rss_per_stream_bytes.unwrap_or(0.0)
            );
        }
    }
}
