//! Metric names (Prometheus conventions, all in one place) and logging setup.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const EVENTS_ACCEPTED: &str = "emostream_events_accepted_total";
pub const EVENTS_REJECTED: &str = "emostream_events_rejected_total";
pub const REQUESTS_REFUSED_BUSY: &str = "emostream_ingest_busy_total";
pub const INGEST_QUEUE_DEPTH: &str = "emostream_ingest_queue_depth";
pub const LOG_APPEND_ERRORS: &str = "emostream_log_append_errors_total";
pub const WINDOWS_PUBLISHED: &str = "emostream_windows_published_total";
pub const PARTIALS_EMITTED: &str = "emostream_partials_emitted_total";
pub const WINDOWS_FORWARDED: &str = "emostream_windows_forwarded_total";
pub const LATE_EVENTS: &str = "emostream_late_events_total";
pub const CONNECTED_CLIENTS: &str = "emostream_connected_clients";
pub const SLOW_CLIENTS_DROPPED: &str = "emostream_slow_clients_dropped_total";
pub const MESSAGES_DELIVERED: &str = "emostream_messages_delivered_total";
pub const SUBSCRIPTIONS: &str = "emostream_subscriptions";
pub const PUBLISH_DELAY: &str = "emostream_window_publish_delay_seconds";
pub const BUILD_INFO: &str = "emostream_build_info";

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns the handle that renders `/metrics`.
pub fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Only fails when another recorder is installed, e.g. by a test harness: metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            process_collector().describe();
            metrics::gauge!(
                BUILD_INFO,
                "version" => env!("CARGO_PKG_VERSION"),
                "kafka" => if cfg!(feature = "kafka") { "true" } else { "false" }
            )
            .set(1.0);
            handle
        })
        .clone()
}

/// The process's own metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_start_time_seconds` …, the names Prometheus's client libraries use).
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// The text of `/metrics`: the process's metrics read now, then every metric of the recorder.
pub fn render(handle: &PrometheusHandle) -> String {
    process_collector().collect();
    handle.render()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(EVENTS_ACCEPTED, "Emoji events answered 2xx by ingest");
    describe_counter!(EVENTS_REJECTED, "Emoji events refused, by reason");
    describe_counter!(REQUESTS_REFUSED_BUSY, "Events refused with 503 because the ingest buffer was full");
    describe_gauge!(INGEST_QUEUE_DEPTH, "Events acknowledged but not yet in the log");
    describe_counter!(LOG_APPEND_ERRORS, "Failed appends to the log (retried)");
    describe_counter!(WINDOWS_PUBLISHED, "Swarm messages published, one per window");
    describe_counter!(PARTIALS_EMITTED, "Per-partition window partials emitted by aggregators");
    describe_counter!(WINDOWS_FORWARDED, "Windows a cluster publisher forwarded to its cluster topic");
    describe_counter!(LATE_EVENTS, "Events that arrived after their window closed (counted in the next one)");
    describe_gauge!(CONNECTED_CLIENTS, "Open SSE/WebSocket streams per subscriber");
    describe_counter!(SLOW_CLIENTS_DROPPED, "Streams closed because the client did not keep up");
    describe_counter!(MESSAGES_DELIVERED, "Swarm messages written to client streams");
    describe_gauge!(SUBSCRIPTIONS, "Registered clients per subscriber");
    describe_histogram!(PUBLISH_DELAY, "From window end to publication");
    describe_gauge!(BUILD_INFO, "Always 1; its labels say which emostream this is (version, kafka support)");
}

/// Logs to stderr; `RUST_LOG` overrides the default `info`.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a file, a pipe or a log collector gets plain text
    // (and `NO_COLOR` turns them off anywhere, https://no-color.org).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        // One JSON object per line, fields at the top level, for a log collector.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_ansi(false).try_init(),
    };
}

/// How log lines look on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured at a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}
