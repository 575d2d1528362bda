//! Wires stages to a log and runs them as named tasks.
//!
//! Any task's error or panic starts an orderly shutdown of the rest. Shutdown runs front to back:
//! ingest stops taking requests and appends what it acknowledged, the aggregator emits every window
//! it holds, the publisher publishes them, clusters and subscribers deliver them, and only then do
//! client streams close. Each step has a bounded wait.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::emoji::EmojiSet;
use crate::core::scale::ScaleRule;
use crate::core::window::WindowSpec;
use crate::http;
use crate::http::ingest::IngestLimits;
use crate::log::{Log, LogError, topics};
use crate::stages::history::History;
use crate::stages::ingest::{AckMode, IngestConfig};
use crate::stages::registry::Registry;
use crate::stages::subscriber::Hub;
use crate::stages::{aggregate, cluster, history, ingest, publish, subscriber};
use crate::telemetry;

/// Everything `emostream up` needs.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub ingest_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub clusters: u32,
    pub subscribers: u32,
    pub window: Duration,
    pub grace: Duration,
    pub scale: ScaleRule,
    pub emojis: EmojiSet,
    pub linger: Duration,
    pub batch: u64,
    pub buffer: u64,
    pub ack: AckMode,
    pub limits: IngestLimits,
    /// Limits of each connection and of each listener (ingest and API alike).
    pub serve: http::ServeLimits,
    pub history: usize,
    /// Partitions of `emoji_topic`.
    pub partitions: u32,
    pub emotions: Arc<crate::core::emotion::EmotionMap>,
    pub trend: crate::core::emotion::TrendConfig,
    /// Kafka: the base of this process's stable instance ids (`{base}-aggregate`, `{base}-publish`,
    /// `{base}-cluster-N`); `None`: dynamic members. Ignored in memory.
    pub instance_id: Option<String>,
    /// After the shutdown signal, how long `/readyz` says "not ready" while everything still serves.
    pub drain_delay: Duration,
}

/// Why the pipeline stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("stage `{0}` failed; see the log above for why")]
    StageFailed(String),
}

/// A named task and the token that asks it to stop.
struct Stage {
    name: String,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// Spawns stages so that a failure of any of them is reported and stops the rest.
pub struct Supervisor {
    failed: CancellationToken,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    stages: Vec<Vec<Stage>>,
    readiness: Arc<http::probe::Readiness>,
    /// How long `/readyz` says "not ready" after the signal before the stages stop.
    drain_delay: Duration,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        let failed = CancellationToken::new();
        let readiness = http::probe::Readiness::new(failed.clone());
        Self { failed, failures: Arc::default(), stages: Vec::new(), readiness, drain_delay: Duration::ZERO }
    }

    /// What this process's `/readyz` answers from.
    pub fn readiness(&self) -> Arc<http::probe::Readiness> {
        self.readiness.clone()
    }

    /// After the shutdown signal, stays up (not ready) this long before stopping.
    pub fn set_drain_delay(&mut self, delay: Duration) {
        self.drain_delay = delay;
    }

    /// Starts a new shutdown step: stages spawned after this stop after the earlier ones finished.
    pub fn step(&mut self) {
        self.stages.push(Vec::new());
    }

    /// Spawns a stage of the current step.
    pub fn spawn<F, Fut, E>(&mut self, name: impl Into<String>, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        if self.stages.is_empty() {
            self.step();
        }
        let name = name.into();
        let stop = CancellationToken::new();
        let fut = f(stop.clone());
        let failed = self.failed.clone();
        let failures = self.failures.clone();
        let task_name = name.clone();
        let handle = tokio::spawn(async move {
            let result = tokio::spawn(fut).await;
            let why = match result {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) if e.is_panic() => "panicked".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::error!(stage = %task_name, error = %why, "stage failed; shutting down");
            failures.lock().expect("supervisor lock poisoned").push(format!("{task_name}: {why}"));
            failed.cancel();
        });
        self.stages.last_mut().expect("a step exists").push(Stage { name, stop, handle });
    }

    /// Resolves when a stage fails.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Waits for `signal` (or a stage failure), then stops the stages step by step.
    ///
    /// # Errors
    /// [`TopologyError::StageFailed`] when a stage failed at any point.
    pub async fn run_until(self, signal: impl Future<Output = ()>, per_step: Duration) -> Result<(), TopologyError> {
        let failed = self.failed();
        tokio::select! {
            () = signal => {
                self.readiness.drain();
                if !self.drain_delay.is_zero() {
                    tracing::info!(drain_delay = ?self.drain_delay, "shutting down: /readyz answers 503 now; still serving until the drain delay ends");
                    tokio::select! {
                        () = tokio::time::sleep(self.drain_delay) => {}
                        () = failed.cancelled() => {}
                    }
                }
                tracing::info!("shutting down: publishing what is held, then closing client streams");
            }
            () = failed.cancelled() => {}
        }
        self.shutdown(per_step).await
    }

    /// Stops the stages step by step, each step waiting up to `per_step` for its stages to finish.
    ///
    /// # Errors
    /// [`TopologyError::StageFailed`] when a stage failed at any point.
    pub async fn shutdown(self, per_step: Duration) -> Result<(), TopologyError> {
        for step in self.stages {
            for s in &step {
                s.stop.cancel();
            }
            for s in step {
                let abort = s.handle.abort_handle();
                if tokio::time::timeout(per_step, s.handle).await.is_err() {
                    tracing::warn!(stage = %s.name, waited = ?per_step, "stage did not stop in time; aborting it");
                    abort.abort();
                }
            }
        }
        let failures = self.failures.lock().expect("supervisor lock poisoned");
        match failures.first() {
            Some(f) => Err(TopologyError::StageFailed(f.clone())),
            None => Ok(()),
        }
    }
}

/// A running embedded pipeline.
pub struct Running {
    pub ingest_addr: SocketAddr,
    pub api_addr: SocketAddr,
    supervisor: Supervisor,
}

impl Running {
    /// Waits for `signal` (or a stage failure), then shuts down in order.
    ///
    /// # Errors
    /// When a stage failed.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), TopologyError> {
        self.supervisor.run_until(signal, Duration::from_secs(10)).await
    }
}

/// Creates the topics every stage of this process needs.
///
/// # Errors
/// When the log cannot be reached.
pub async fn ensure_topics(log: &dyn Log, partitions: u32, clusters: u32) -> Result<u32, LogError> {
    let partitions = log.ensure_topic(topics::EVENTS, partitions, false).await?;
    log.ensure_topic(topics::PARTIALS, 1, false).await?;
    log.ensure_topic(topics::MAIN, 1, false).await?;
    for c in 1..=clusters {
        log.ensure_topic(&topics::cluster(c), 1, false).await?;
    }
    log.ensure_topic(topics::SUBSCRIPTIONS, 1, true).await?;
    Ok(partitions)
}

/// Starts every stage in this process over `log`: the embedded pipeline when `log` is in memory.
///
/// # Errors
/// When an address cannot be bound or the log cannot be reached.
pub async fn up(config: UpConfig, log: Arc<dyn Log>) -> Result<Running, TopologyError> {
    let prometheus = telemetry::prometheus();
    let partitions = ensure_topics(&*log, config.partitions, config.clusters).await?;
    let ingest_listener = http::bind(config.ingest_addr, "--ingest-addr").await?;
    let api_listener = http::bind(config.api_addr, "--api-addr").await?;
    let ingest_addr = ingest_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;
    let window = WindowSpec::new(i64::try_from(config.window.as_millis()).unwrap_or(i64::MAX));

    let mut sup = Supervisor::new();
    sup.set_drain_delay(config.drain_delay);
    let readiness = sup.readiness();
    readiness.watch_log(log.clone());

    // Step 1: ingest HTTP, then its batcher (which appends what was acknowledged).
    let (handle, batcher) = ingest::ingest(
        log.clone(),
        config.emojis.clone(),
        IngestConfig { linger: config.linger, batch: config.batch, buffer: config.buffer, ack: config.ack, partitions },
    );
    let ingest_app = http::ingest::app(
        http::ingest::IngestState::new(handle, config.emojis.clone(), prometheus.clone()).without_metrics(),
        config.limits,
    )
    .merge(http::probe::routes(readiness.clone()));
    sup.step();
    sup.spawn("ingest-http", |stop| http::serve_http1(ingest_listener, ingest_app, config.serve, stop));
    sup.step();
    sup.spawn("ingest-batcher", |stop| batcher.run(stop));

    // Step 2..: the aggregation chain. Consumers are created before the first event can arrive.
    let base = config.instance_id.clone();
    let instance = |stage: &str| base.as_ref().map(|b| format!("{b}-{stage}"));
    sup.step();
    let l = log.clone();
    sup.spawn("aggregate", move |stop| {
        aggregate::run(l, aggregate::AggregateConfig { window, grace: config.grace, instance_id: instance("aggregate") }, stop)
    });
    sup.step();
    let l = log.clone();
    let publish_config = publish::PublishConfig {
        window,
        scale: config.scale,
        emotions: config.emotions.clone(),
        trend: config.trend.clone(),
        instance_id: instance("publish"),
    };
    sup.spawn("publish", move |stop| publish::run(l, publish_config, stop));
    sup.step();
    for c in 1..=config.clusters {
        let l = log.clone();
        sup.spawn(format!("cluster-{c}"), move |stop| {
            cluster::run(l, cluster::ClusterConfig { id: c, instance_id: instance(&format!("cluster-{c}")) }, stop)
        });
    }

    // Subscribers and the API.
    let mut hubs = HashMap::new();
    sup.step();
    for c in 1..=config.clusters {
        // The subscribers of a cluster follow the same topic: they share one copy of its windows.
        let cluster_history = History::new(config.history);
        for s in 1..=config.subscribers {
            let hub = Hub::sharing(c, s, cluster_history.clone());
            hubs.insert((c, s), hub.clone());
            let l = log.clone();
            let replay = config.history as u64;
            sup.spawn(format!("subscriber-{c}.{s}"), move |stop| subscriber::run(l, hub, replay, stop));
        }
    }
    let history_store = History::new(config.history);
    let l = log.clone();
    let h = history_store.clone();
    let cap = config.history as u64;
    sup.spawn("history", move |stop| history::run(l, h, cap, stop));

    let streams_shutdown = CancellationToken::new();
    let api_state = http::api::ApiState {
        registry: Arc::new(Registry::new(config.clusters, config.subscribers)),
        hubs: Arc::new(hubs),
        history: history_store,
        prometheus,
        streams_shutdown: streams_shutdown.clone(),
        window_ms: Some(window.size_ms()),
        ingest_url: format!("http://{ingest_addr}"),
        emojis: config.emojis.iter().map(|e| e.to_string()).collect(),
        api_url: format!("http://{api_addr}"),
        subscriptions_log: None,
        placement_wait: Duration::ZERO,
    };
    let api_app = http::api::app(api_state).merge(http::probe::routes(readiness));
    let serve = config.serve;
    sup.step();
    sup.spawn("api-http", move |stop| {
        let ss = streams_shutdown.clone();
        let s2 = stop.clone();
        async move {
            // Streams end (after their last window) when the API is asked to stop.
            tokio::spawn(async move {
                s2.cancelled().await;
                ss.cancel();
            });
            http::serve_http1(api_listener, api_app, serve, stop).await
        }
    });

    Ok(Running { ingest_addr, api_addr, supervisor: sup })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
