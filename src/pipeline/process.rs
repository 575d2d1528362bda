//! The distributed mode: each stage as its own process over Apache Kafka.
//!
//! `emostream ingest`, `aggregate`, `publish`, `cluster --id N`, `subscriber --cluster N --id M` and
//! `registry` each run exactly one stage of the pipeline (wired by the same [`spawn`](super::spawn)
//! functions `emostream up` is composed from, under the same [`Supervisor`]), over Kafka instead of
//! the in-process log. Every process creates
//! the topics it needs, prints one readiness line to stdout once it serves (`… listening on
//! http://ADDR` or `… running: …`), stops cleanly on SIGTERM or Ctrl-C, and exits non-zero with a
//! readable message when Kafka cannot be reached.
//!
//! The `start_*` functions take any [`Log`], so the wiring is tested over the in-process log too.
//!
//! How the registry works across processes: the `registry` process writes every subscription to the
//! compacted `emostream_subscriptions` topic before it answers; each `subscriber` process reads that
//! topic into its own [`Registry`] copy (so it knows its clients without asking anyone), and announces
//! on the same topic the URL where it serves them, which the registry hands to clients as `stream_url`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::spawn::{self, IngestStage, Metrics};
use super::supervisor::{PipelineError, Supervisor, shutdown_signal};
use crate::http;
use crate::log::{Log, LogError, topics};
use crate::stages::history::History;
use crate::stages::registry::Registry;
use crate::stages::subscriber::Hub;
use crate::stages::{aggregate, cluster, publish};
use crate::telemetry;

/// Where a process finds Apache Kafka (`--kafka`, `--namespace`, `--replication`,
/// `--connect-timeout`).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port[,host:port]`.
    pub brokers: String,
    /// Prefix of every topic, consumer group and transactional id ("" = none).
    pub namespace: String,
    /// Replication factor of the topics this process creates.
    pub replication: i16,
    pub connect_timeout: Duration,
}

/// How long a stage waits, at start, to read what its topics already hold before it serves anyway.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(15);

/// How long a subscriber waits for a client the registry has just placed on it to show up in its
/// copy of the registry, before answering 404.
pub const PLACEMENT_WAIT: Duration = Duration::from_secs(2);

/// Per shutdown step, the longest wait for its stages to finish.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// A started stage process.
pub struct Started {
    /// Where its HTTP API listens, if it has one.
    pub addr: Option<SocketAddr>,
    /// The readiness line (printed by [`serve`]).
    pub ready: String,
    supervisor: Supervisor,
}

impl Started {
    /// Waits for `signal` (or a stage failure), then stops in order.
    ///
    /// # Errors
    /// When a stage failed.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), PipelineError> {
        self.supervisor.run_until(signal, STOP_WAIT).await
    }

    /// Stops at once (tests).
    ///
    /// # Errors
    /// When a stage failed.
    pub async fn stop(self) -> Result<(), PipelineError> {
        self.run_until(async {}).await
    }
}

/// Connects to Kafka.
///
/// # Errors
/// When Kafka cannot be reached within `connect_timeout` (the message says how to start one), or
/// this binary was built without the `kafka` feature.
pub async fn connect(k: &KafkaSettings) -> anyhow::Result<Arc<dyn Log>> {
    #[cfg(feature = "kafka")]
    {
        use crate::log::kafka::{KafkaConfig, KafkaLog};
        let config = KafkaConfig {
            namespace: k.namespace.clone(),
            replication: k.replication,
            connect_timeout: k.connect_timeout,
            ..KafkaConfig::new(k.brokers.clone())
        };
        Ok(Arc::new(KafkaLog::connect(config).await?))
    }
    #[cfg(not(feature = "kafka"))]
    {
        anyhow::bail!(
            "cannot use Kafka at {}: this emostream was built without the `kafka` feature (rebuild with default features)",
            k.brokers
        )
    }
}

/// Creates the topics every stage reads or writes, plus `extra` (a cluster topic); returns the
/// partitions of `emoji_topic`, warning when it already exists with another count.
async fn ensure(log: &dyn Log, partitions: u32, extra: Option<String>) -> Result<u32, LogError> {
    let actual = spawn::ensure_topics(log, partitions, 0).await?;
    if actual != partitions {
        tracing::warn!(
            topic = topics::EVENTS,
            partitions = actual,
            requested = partitions,
            "the topic exists with another partition count; using it (--partitions only applies when creating it)"
        );
    }
    if let Some(t) = extra {
        log.ensure_topic(&t, 1, false).await?;
    }
    Ok(actual)
}

/// Waits until every token is cancelled, at most [`CATCH_UP_LIMIT`], or until a stage fails.
async fn caught_up(what: &str, tokens: &[CancellationToken], failed: CancellationToken) -> Result<(), PipelineError> {
    let all = futures::future::join_all(tokens.iter().map(CancellationToken::cancelled));
    tokio::select! {
        r = tokio::time::timeout(CATCH_UP_LIMIT, all) => {
            if r.is_err() {
                tracing::warn!(waited = ?CATCH_UP_LIMIT, "{what} did not finish reading its topics in time; serving anyway");
            }
            Ok(())
        }
        () = failed.cancelled() => Err(PipelineError::TaskFailed(format!("{what} failed while starting; see the log above"))),
    }
}

/// Starts the ingest API appending to `emoji_topic`.
///
/// # Errors
/// When the address cannot be bound or the log cannot be reached.
pub async fn start_ingest(log: Arc<dyn Log>, mut s: IngestStage) -> Result<Started, PipelineError> {
    let partitions = ensure(&*log, s.config.partitions, None).await?;
    s.config.partitions = partitions;
    let listener = http::bind(s.addr, "--ingest-addr").await?;
    let addr = listener.local_addr()?;
    let mut sup = Supervisor::new();
    sup.readiness().watch_log(log.clone());
    spawn::spawn_ingest(&mut sup, log.clone(), listener, s, Metrics::Served);
    let ready = format!(
        "ingest listening on http://{addr}: POST /emoji, POST /emojis → {} ({partitions} partitions) on {}",
        topics::EVENTS,
        log.describe()
    );
    Ok(Started { addr: Some(addr), ready, supervisor: sup })
}

/// Starts an aggregator. Several may run: they share `emoji_topic`'s partitions (one owner each).
///
/// # Errors
/// When the log cannot be reached.
pub async fn start_aggregate(log: Arc<dyn Log>, config: aggregate::AggregateConfig, partitions: u32) -> Result<Started, PipelineError> {
    let partitions = ensure(&*log, partitions, None).await?;
    let mut sup = Supervisor::new();
    sup.readiness().watch_log(log.clone());
    let window = config.window.size_ms();
    spawn::spawn_aggregate(&mut sup, log.clone(), config);
    let ready = format!(
        "aggregate running: {} ({partitions} partitions, shared by group {}) → {}, {window} ms windows, on {}",
        topics::EVENTS,
        aggregate::GROUP,
        topics::PARTIALS,
        log.describe()
    );
    Ok(Started { addr: None, ready, supervisor: sup })
}

/// Starts the main publisher (run one; a second one waits as a standby in its consumer group).
///
/// # Errors
/// When the log cannot be reached.
pub async fn start_publish(log: Arc<dyn Log>, config: publish::PublishConfig, partitions: u32) -> Result<Started, PipelineError> {
    let partitions = ensure(&*log, partitions, None).await?;
    let mut sup = Supervisor::new();
    sup.readiness().watch_log(log.clone());
    let ready = format!(
        "publish running: {} (from {partitions} partitions) → {}, {} ms windows, scale {}, on {}",
        topics::PARTIALS,
        topics::MAIN,
        config.window.size_ms(),
        config.scale,
        log.describe()
    );
    spawn::spawn_publish(&mut sup, log.clone(), config);
    Ok(Started { addr: None, ready, supervisor: sup })
}

/// Starts cluster publisher `id`.
///
/// # Errors
/// When the log cannot be reached.
pub async fn start_cluster(log: Arc<dyn Log>, config: cluster::ClusterConfig, partitions: u32) -> Result<Started, PipelineError> {
    let id = config.id;
    ensure(&*log, partitions, Some(topics::cluster(id))).await?;
    let mut sup = Supervisor::new();
    sup.readiness().watch_log(log.clone());
    spawn::spawn_cluster(&mut sup, log.clone(), config);
    let ready = format!("cluster {id} running: {} → {}, on {}", topics::MAIN, topics::cluster(id), log.describe());
    Ok(Started { addr: None, ready, supervisor: sup })
}

/// Settings of a subscriber process.
#[derive(Debug, Clone)]
pub struct SubscriberStage {
    pub cluster: u32,
    pub id: u32,
    pub api_addr: SocketAddr,
    /// Base URL announced to the registry; `None`: from the bound address.
    pub advertise: Option<String>,
    /// Windows kept for `/windows` and for reconnecting clients.
    pub history: usize,
    pub partitions: u32,
    pub serve: http::ServeLimits,
}

/// The URL clients reach a listener at: `--advertise`, or `http://` and the bound address (with this
/// machine's host name instead of an unspecified address such as 0.0.0.0).
pub fn advertised_url(bound: SocketAddr, advertise: Option<&str>) -> String {
    if let Some(url) = advertise {
        return url.trim_end_matches('/').to_string();
    }
    if bound.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        return format!("http://{host}:{}", bound.port());
    }
    format!("http://{bound}")
}

/// Starts subscriber `cluster.id`: follows its cluster topic and the subscriptions topic, serves its
/// clients' streams, and announces its URL on the subscriptions topic (and that it left, at shutdown).
///
/// # Errors
/// When the address cannot be bound, the log cannot be reached, or its followers fail while starting.
pub async fn start_subscriber(log: Arc<dyn Log>, s: SubscriberStage) -> Result<Started, PipelineError> {
    ensure(&*log, s.partitions, Some(topics::cluster(s.cluster))).await?;
    let listener = http::bind(s.api_addr, "--api-addr").await?;
    let addr = listener.local_addr()?;
    let url = advertised_url(addr, s.advertise.as_deref());
    let (c, id) = (s.cluster, s.id);

    let hub = Hub::new(c, id, s.history);
    // A read-only copy: this process never places clients, it only learns where they are.
    let registry = Arc::new(Registry::new(0, 0));
    let registry_ready = CancellationToken::new();
    let ready = CancellationToken::new();
    let streams_shutdown = CancellationToken::new();
    let state = http::api::ApiState {
        registry: registry.clone(),
        hubs: Arc::new(HashMap::from([((c, id), hub.clone())])),
        history: hub.history(),
        prometheus: telemetry::prometheus(),
        streams_shutdown: streams_shutdown.clone(),
        window_ms: None,
        ingest_url: String::new(),
        emojis: Vec::new(),
        api_url: url.clone(),
        subscriptions_log: None,
        placement_wait: PLACEMENT_WAIT,
    };
    let mut sup = Supervisor::new();
    sup.readiness().watch_log(log.clone());
    let app = http::api::subscriber_app(state).merge(http::probe::routes(sup.readiness()));
    // Shutdown order: say it left (the registry stops placing clients here), end the streams, then
    // stop following the topics.
    sup.step();
    spawn::spawn_announce(&mut sup, log.clone(), (c, id), url.clone(), ready.clone());
    sup.step();
    spawn::spawn_api(&mut sup, listener, app, s.serve, streams_shutdown, Some(ready.clone()));
    sup.step();
    spawn::spawn_subscriber(&mut sup, log.clone(), (c, id), hub.clone(), s.history);
    spawn::spawn_registry_follower(&mut sup, log.clone(), registry, registry_ready.clone());

    let hub_ready = CancellationToken::new();
    let (h, hr) = (hub.clone(), hub_ready.clone());
    tokio::spawn(async move {
        h.caught_up().await;
        hr.cancel();
    });
    caught_up(&format!("subscriber {c}.{id}"), &[hub_ready, registry_ready], sup.failed()).await?;
    ready.cancel();
    let ready = format!(
        "subscriber {c}.{id} listening on http://{addr}: GET /stream/{{id}}, GET /ws/{{id}} for the clients of {} (announced as {url}), on {}",
        topics::cluster(c),
        log.describe()
    );
    Ok(Started { addr: Some(addr), ready, supervisor: sup })
}

/// Settings of the registry process.
#[derive(Debug, Clone)]
pub struct RegistryStage {
    pub api_addr: SocketAddr,
    pub clusters: u32,
    pub subscribers: u32,
    /// Windows kept for `/windows`.
    pub history: usize,
    pub partitions: u32,
    pub serve: http::ServeLimits,
}

/// Starts the subscription API over the subscriptions topic.
///
/// # Errors
/// When the address cannot be bound, the log cannot be reached, or its followers fail while starting.
pub async fn start_registry(log: Arc<dyn Log>, s: RegistryStage) -> Result<Started, PipelineError> {
    ensure(&*log, s.partitions, None).await?;
    let listener = http::bind(s.api_addr, "--api-addr").await?;
    let addr = listener.local_addr()?;
    let registry = Arc::new(Registry::distributed(s.clusters, s.subscribers));
    let registry_ready = CancellationToken::new();
    let history_store = History::new(s.history);
    let state = http::api::ApiState {
        registry: registry.clone(),
        hubs: Arc::new(HashMap::new()),
        history: history_store.clone(),
        prometheus: telemetry::prometheus(),
        streams_shutdown: CancellationToken::new(),
        window_ms: None,
        ingest_url: String::new(),
        emojis: Vec::new(),
        api_url: format!("http://{addr}"),
        subscriptions_log: Some(log.clone()),
        placement_wait: Duration::ZERO,
    };
    let mut sup = Supervisor::new();
    sup.readiness().watch_log(log.clone());
    let app = http::api::registry_app(state).merge(http::probe::routes(sup.readiness()));
    sup.step();
    // Placing clients needs the current map: serve once the topic is read.
    spawn::spawn_api(&mut sup, listener, app, s.serve, CancellationToken::new(), Some(registry_ready.clone()));
    sup.step();
    spawn::spawn_registry_follower(&mut sup, log.clone(), registry, registry_ready.clone());
    spawn::spawn_history(&mut sup, log.clone(), history_store, s.history);

    caught_up("the registry", &[registry_ready], sup.failed()).await?;
    let ready = format!(
        "registry listening on http://{addr}: POST /subscribe, POST /unsubscribe, GET /subscriptions over {} ({} clusters x {} subscribers), on {}",
        topics::SUBSCRIPTIONS,
        s.clusters,
        s.subscribers,
        log.describe()
    );
    Ok(Started { addr: Some(addr), ready, supervisor: sup })
}

/// Serves `GET /metrics`, `GET /healthz`, `/livez` and `/readyz` at `addr` for a stage without an HTTP API of its own; it
/// stops last, after the stage.
///
/// # Errors
/// When `--metrics-addr` cannot be bound.
pub async fn with_metrics(mut started: Started, addr: Option<SocketAddr>) -> anyhow::Result<Started> {
    use axum::http::header::CONTENT_TYPE;
    use axum::routing::get;
    let Some(addr) = addr else { return Ok(started) };
    let listener = http::bind(addr, "--metrics-addr").await?;
    let bound = listener.local_addr()?;
    let prometheus = telemetry::prometheus();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = crate::telemetry::render(&prometheus);
                async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
        .route("/healthz", get(|| async { ([(CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#) }))
        .merge(http::probe::routes(started.supervisor.readiness()));
    started.supervisor.step();
    started.supervisor.spawn("metrics-http", move |stop| http::serve_http1(listener, app, http::ServeLimits::default(), stop));
    started.ready.push_str(&format!("; metrics on http://{bound}/metrics"));
    started.addr = Some(bound);
    Ok(started)
}

/// Prints the readiness line, then runs until SIGTERM or Ctrl-C.
async fn serve(started: Started) -> anyhow::Result<()> {
    crate::say!("{}", started.ready);
    tracing::info!("{}", started.ready);
    started.run_until(shutdown_signal()).await.context("stopped with an error")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `emostream ingest`.
///
/// # Errors
/// When Kafka cannot be reached, the address is taken, or the stage fails.
pub async fn run_ingest(kafka: KafkaSettings, stage: IngestStage) -> anyhow::Result<()> {
    raise_nofile_limit();
    let log = connect(&kafka).await.context("ingest cannot start")?;
    serve(start_ingest(log, stage).await.context("ingest cannot start")?).await
}

/// `emostream aggregate`.
///
/// # Errors
/// When Kafka cannot be reached or the stage fails.
pub async fn run_aggregate(
    kafka: KafkaSettings,
    config: aggregate::AggregateConfig,
    partitions: u32,
    metrics_addr: Option<SocketAddr>,
) -> anyhow::Result<()> {
    // The recorder goes in before the stage registers its counters.
    let _ = telemetry::prometheus();
    let log = connect(&kafka).await.context("aggregate cannot start")?;
    match &config.instance_id {
        Some(id) => tracing::info!(instance_id = %id, "static group member: a restart with this id resumes at once"),
        None => tracing::info!(
            "no --id or --instance-id: a dynamic group member (after a kill -9, its partitions wait for the session and transaction timeouts)"
        ),
    }
    let started = start_aggregate(log, config, partitions).await.context("aggregate cannot start")?;
    serve(with_metrics(started, metrics_addr).await?).await
}

/// `emostream publish`.
///
/// # Errors
/// When Kafka cannot be reached or the stage fails.
pub async fn run_publish(
    kafka: KafkaSettings,
    config: publish::PublishConfig,
    partitions: u32,
    metrics_addr: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let _ = telemetry::prometheus();
    let log = connect(&kafka).await.context("publish cannot start")?;
    let started = start_publish(log, config, partitions).await.context("publish cannot start")?;
    serve(with_metrics(started, metrics_addr).await?).await
}

/// `emostream cluster --id N`.
///
/// # Errors
/// When Kafka cannot be reached or the stage fails.
pub async fn run_cluster(
    kafka: KafkaSettings,
    config: cluster::ClusterConfig,
    partitions: u32,
    metrics_addr: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let id = config.id;
    let _ = telemetry::prometheus();
    let log = connect(&kafka).await.with_context(|| format!("cluster {id} cannot start"))?;
    let started = start_cluster(log, config, partitions).await.with_context(|| format!("cluster {id} cannot start"))?;
    serve(with_metrics(started, metrics_addr).await?).await
}

/// `emostream subscriber --cluster N --id M`.
///
/// # Errors
/// When Kafka cannot be reached, the address is taken, or the stage fails.
pub async fn run_subscriber(kafka: KafkaSettings, stage: SubscriberStage) -> anyhow::Result<()> {
    raise_nofile_limit();
    let what = format!("subscriber {}.{} cannot start", stage.cluster, stage.id);
    let log = connect(&kafka).await.context(what.clone())?;
    serve(start_subscriber(log, stage).await.context(what)?).await
}

/// `emostream registry`.
///
/// # Errors
/// When Kafka cannot be reached, the address is taken, or the stage fails.
pub async fn run_registry(kafka: KafkaSettings, stage: RegistryStage) -> anyhow::Result<()> {
    let log = connect(&kafka).await.context("the registry cannot start")?;
    serve(start_registry(log, stage).await.context("the registry cannot start")?).await
}

/// One socket per client: processes that hold many need more than the usual 1024 open files.
pub(crate) fn raise_nofile_limit() {
    if let Err(e) = crate::sys::raise_nofile_limit() {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_url_defaults_to_the_bound_address() {
        let a: SocketAddr = "127.0.0.1:5101".parse().unwrap();
        assert_eq!(advertised_url(a, None), "http://127.0.0.1:5101");
        assert_eq!(advertised_url(a, Some("https://live.example/")), "https://live.example");
        let any: SocketAddr = "0.0.0.0:5101".parse().unwrap();
        let u = advertised_url(any, None);
        assert!(u.starts_with("http://") && u.ends_with(":5101") && !u.contains("0.0.0.0"), "{u}");
    }
}
