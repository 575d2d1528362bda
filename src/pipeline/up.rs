//! `emostream up`: every stage in this process, over the in-process log (the embedded default) or
//! over Kafka, composed from the same [`spawn`](super::spawn) functions the stage processes use.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::process::{KafkaSettings, connect};
use super::spawn::{self, IngestStage, Metrics};
use super::supervisor::{PipelineError, Supervisor, shutdown_signal};
use crate::http;
use crate::log::Log;
use crate::log::memory::MemoryLog;
use crate::stages::history::History;
use crate::stages::registry::Registry;
use crate::stages::subscriber::Hub;
use crate::stages::{aggregate, cluster, publish};
use crate::telemetry;

/// Everything `emostream up` needs: the stages' own configurations, and the shape of the fan-out.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub ingest: IngestStage,
    /// The subscription and delivery API and the dashboard.
    pub api_addr: SocketAddr,
    /// Limits of the API listener (ingest has its own in `ingest.serve`).
    pub api_serve: http::ServeLimits,
    pub clusters: u32,
    pub subscribers: u32,
    pub aggregate: aggregate::AggregateConfig,
    pub publish: publish::PublishConfig,
    /// Windows kept for `/windows` and for reconnecting clients.
    pub history: usize,
    /// Kafka: the base of the clusters' stable instance ids (`{base}-cluster-N`); `None`: dynamic
    /// members. Ignored in memory.
    pub instance_id: Option<String>,
    /// After the shutdown signal, how long `/readyz` says "not ready" while everything still serves.
    pub drain_delay: Duration,
}

/// A running pipeline.
pub struct Running {
    pub ingest_addr: SocketAddr,
    pub api_addr: SocketAddr,
    supervisor: Supervisor,
}

impl Running {
    /// Waits for `signal` (or a task failure), then shuts down in order.
    ///
    /// # Errors
    /// When a task failed.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), PipelineError> {
        self.supervisor.run_until(signal, Duration::from_secs(10)).await
    }
}

/// Starts every stage in this process over `log`: the embedded pipeline when `log` is in memory.
///
/// # Errors
/// When an address cannot be bound or the log cannot be reached.
pub async fn up(mut config: UpConfig, log: Arc<dyn Log>) -> Result<Running, PipelineError> {
    let prometheus = telemetry::prometheus();
    config.ingest.config.partitions = spawn::ensure_topics(&*log, config.ingest.config.partitions, config.clusters).await?;
    let ingest_listener = http::bind(config.ingest.addr, "--ingest-addr").await?;
    let api_listener = http::bind(config.api_addr, "--api-addr").await?;
    let ingest_addr = ingest_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;
    let emojis = config.ingest.emojis.iter().map(|e| e.to_string()).collect();
    let window = config.aggregate.window;

    let mut sup = Supervisor::new();
    sup.set_drain_delay(config.drain_delay);
    sup.readiness().watch_log(log.clone());

    // Shutdown runs front to back: ingest, then the aggregation chain, then the fan-out, then the API.
    spawn::spawn_ingest(&mut sup, log.clone(), ingest_listener, config.ingest, Metrics::NotHere);
    sup.step();
    spawn::spawn_aggregate(&mut sup, log.clone(), config.aggregate);
    sup.step();
    spawn::spawn_publish(&mut sup, log.clone(), config.publish);
    sup.step();
    for c in 1..=config.clusters {
        let instance_id = config.instance_id.as_ref().map(|b| format!("{b}-cluster-{c}"));
        spawn::spawn_cluster(&mut sup, log.clone(), cluster::ClusterConfig { id: c, instance_id });
    }

    sup.step();
    let mut hubs = HashMap::new();
    for c in 1..=config.clusters {
        // The subscribers of a cluster follow the same topic: they share one copy of its windows.
        let cluster_history = History::new(config.history);
        for s in 1..=config.subscribers {
            let hub = Hub::sharing(c, s, cluster_history.clone());
            hubs.insert((c, s), hub.clone());
            spawn::spawn_subscriber(&mut sup, log.clone(), (c, s), hub, config.history);
        }
    }
    let history = History::new(config.history);
    spawn::spawn_history(&mut sup, log.clone(), history.clone(), config.history);

    let streams_shutdown = CancellationToken::new();
    let api_state = http::api::ApiState {
        registry: Arc::new(Registry::new(config.clusters, config.subscribers)),
        hubs: Arc::new(hubs),
        history,
        prometheus,
        streams_shutdown: streams_shutdown.clone(),
        window_ms: Some(window.size_ms()),
        ingest_url: format!("http://{ingest_addr}"),
        emojis,
        api_url: format!("http://{api_addr}"),
        subscriptions_log: None,
        placement_wait: Duration::ZERO,
    };
    let api_app = http::api::app(api_state).merge(http::probe::routes(sup.readiness()));
    sup.step();
    spawn::spawn_api(&mut sup, api_listener, api_app, config.api_serve, streams_shutdown, None);

    Ok(Running { ingest_addr, api_addr, supervisor: sup })
}

/// `emostream up`: starts the pipeline (over Kafka when `kafka` is given), prints where it serves,
/// and runs until SIGTERM or Ctrl-C.
///
/// # Errors
/// When the pipeline cannot start or a stage fails.
pub async fn run(config: UpConfig, kafka: Option<KafkaSettings>) -> anyhow::Result<()> {
    // One socket per viewer: 10 000 viewers need more than the usual 1024 open files.
    super::process::raise_nofile_limit();
    let log: Arc<dyn Log> = match &kafka {
        Some(k) => connect(k).await.context("cannot start the pipeline")?,
        None => Arc::new(MemoryLog::new()),
    };
    let mode = if kafka.is_some() { format!("one process, {}", log.describe()) } else { "embedded, in-process log".to_string() };
    let (clusters, subscribers) = (config.clusters, config.subscribers);
    let (window, scale) = (config.aggregate.window.size_ms(), config.publish.scale);
    let running = up(config, log).await.context("cannot start the pipeline")?;
    let (ingest, api) = (running.ingest_addr, running.api_addr);
    crate::say!("EmoStream is up ({mode})");
    crate::say!("  ingest     http://{ingest}   POST /emoji, POST /emojis");
    crate::say!("  api        http://{api}   POST /subscribe, GET /stream/{{id}}, GET /ws/{{id}}, GET /windows, GET /metrics");
    crate::say!("  dashboard  http://{api}/");
    crate::say!("  {clusters} clusters x {subscribers} subscribers, {window} ms windows, scale {scale}");
    crate::say!("try it:");
    crate::say!("  curl -X POST http://{api}/subscribe -H 'Content-Type: application/json' -d '{{\"client_id\":\"me\"}}'");
    crate::say!("  curl -N http://{api}/stream/me &");
    crate::say!("  curl -X POST http://{ingest}/emoji -H 'Content-Type: application/json' -d '{{\"emoji\":\"😂\",\"client_id\":\"me\"}}'");
    crate::say!("Ctrl-C stops: pending windows are published before streams close.");
    running.run_until(shutdown_signal()).await.context("the pipeline stopped with an error")?;
    crate::say!("EmoStream stopped cleanly");
    Ok(())
}
