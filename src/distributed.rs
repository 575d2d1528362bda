//! The distributed mode: each stage as its own process over Apache Kafka.
//!
//! `emostream ingest`, `aggregate`, `publish`, `cluster --id N`, `subscriber --cluster N --id M` and
//! `registry` each run exactly one stage of the pipeline (the same stage functions `emostream up` runs,
//! under the same [`Supervisor`]), wired to Kafka instead of the in-process log. Every process creates
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

use crate::cli::{AggregateArgs, ClusterArgs, IngestArgs, KafkaArgs, PublishArgs, RegistryArgs, SubscriberArgs};
use crate::http;
use crate::log::{Log, LogError, topics};
use crate::stages::history::History;
use crate::stages::registry::{self, Announcement, Entry, Registry};
use crate::stages::subscriber::Hub;
use crate::stages::{aggregate, cluster, history, ingest, publish, subscriber};
use crate::telemetry;
use crate::topology::{self, Supervisor, TopologyError};

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
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), TopologyError> {
        self.supervisor.run_until(signal, STOP_WAIT).await
    }

    /// Stops at once (tests).
    ///
    /// # Errors
    /// When a stage failed.
    pub async fn stop(self) -> Result<(), TopologyError> {
        self.run_until(async {}).await
    }
}

/// Connects to the Kafka given by `--kafka`.
///
/// # Errors
/// When Kafka cannot be reached within `--connect-timeout` (the message says how to start one), or
/// this binary was built without the `kafka` feature.
pub async fn connect(args: &KafkaArgs) -> anyhow::Result<Arc<dyn Log>> {
    let Some(brokers) = args.kafka.clone() else {
        anyhow::bail!("--kafka HOST:PORT is required");
    };
    #[cfg(feature = "kafka")]
    {
        use crate::log::kafka::{KafkaConfig, KafkaLog};
        let config = KafkaConfig {
            namespace: args.namespace.clone(),
            replication: args.replication,
            connect_timeout: args.connect_timeout,
            ..KafkaConfig::new(brokers)
        };
        Ok(Arc::new(KafkaLog::connect(config).await?))
    }
    #[cfg(not(feature = "kafka"))]
    {
        anyhow::bail!("cannot use Kafka at {brokers}: this emostream was built without the `kafka` feature (rebuild with default features)")
    }
}

/// Creates the topics every stage reads or writes, plus `extra` (a cluster topic); returns the
/// partitions of `emoji_topic`, warning when it already exists with another count.
async fn ensure(log: &dyn Log, partitions: u32, extra: Option<String>) -> Result<u32, LogError> {
    let actual = topology::ensure_topics(log, partitions, 0).await?;
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
async fn caught_up(what: &str, tokens: &[CancellationToken], failed: CancellationToken) -> Result<(), TopologyError> {
    let all = futures::future::join_all(tokens.iter().map(CancellationToken::cancelled));
    tokio::select! {
        r = tokio::time::timeout(CATCH_UP_LIMIT, all) => {
            if r.is_err() {
                tracing::warn!(waited = ?CATCH_UP_LIMIT, "{what} did not finish reading its topics in time; serving anyway");
            }
            Ok(())
        }
        () = failed.cancelled() => Err(TopologyError::StageFailed(format!("{what} failed while starting; see the log above"))),
    }
}

/// Settings of the ingest process.
#[derive(Debug, Clone)]
pub struct IngestStage {
    pub addr: SocketAddr,
    pub emojis: crate::core::emoji::EmojiSet,
    /// Its `partitions` is what to create `emoji_topic` with.
    pub config: ingest::IngestConfig,
    pub limits: http::ingest::IngestLimits,
    pub serve: http::ServeLimits,
}

/// Starts the ingest API appending to `emoji_topic`.
///
/// # Errors
/// When the address cannot be bound or the log cannot be reached.
pub async fn start_ingest(log: Arc<dyn Log>, s: IngestStage) -> Result<Started, TopologyError> {
    let partitions = ensure(&*log, s.config.partitions, None).await?;
    let listener = http::bind(s.addr, "--ingest-addr").await?;
    let addr = listener.local_addr()?;
    let (handle, batcher) = ingest::ingest(log.clone(), s.emojis.clone(), ingest::IngestConfig { partitions, ..s.config });
    let mut sup = Supervisor::new();
    sup.readiness().watch_log(log.clone());
    let app = http::ingest::app(http::ingest::IngestState::new(handle, s.emojis, telemetry::prometheus()), s.limits)
        .merge(http::probe::routes(sup.readiness()));
    // Stop taking requests first, then append everything acknowledged.
    sup.step();
    sup.spawn("ingest-http", move |stop| http::serve_http1(listener, app, s.serve, stop));
    sup.step();
    sup.spawn("ingest-batcher", |stop| batcher.run(stop));
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
pub async fn start_aggregate(log: Arc<dyn Log>, config: aggregate::AggregateConfig, partitions: u32) -> Result<Started, TopologyError> {
    let partitions = ensure(&*log, partitions, None).await?;
    let mut sup = Supervisor::new();
    sup.readiness().watch_log(log.clone());
    let window = config.window.size_ms();
    let l = log.clone();
    sup.spawn("aggregate", move |stop| aggregate::run(l, config, stop));
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
pub async fn start_publish(log: Arc<dyn Log>, config: publish::PublishConfig, partitions: u32) -> Result<Started, TopologyError> {
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
    let l = log.clone();
    sup.spawn("publish", move |stop| publish::run(l, config, stop));
    Ok(Started { addr: None, ready, supervisor: sup })
}

/// Starts cluster publisher `id`.
///
/// # Errors
/// When the log cannot be reached.
pub async fn start_cluster(log: Arc<dyn Log>, id: u32, instance_id: Option<String>, partitions: u32) -> Result<Started, TopologyError> {
    ensure(&*log, partitions, Some(topics::cluster(id))).await?;
    let mut sup = Supervisor::new();
    sup.readiness().watch_log(log.clone());
    let l = log.clone();
    sup.spawn(format!("cluster-{id}"), move |stop| cluster::run(l, cluster::ClusterConfig { id, instance_id }, stop));
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
pub async fn start_subscriber(log: Arc<dyn Log>, s: SubscriberStage) -> Result<Started, TopologyError> {
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
    let serve = s.serve;

    let mut sup = Supervisor::new();
    sup.readiness().watch_log(log.clone());
    let app = http::api::subscriber_app(state).merge(http::probe::routes(sup.readiness()));
    // Shutdown order: say it left (the registry stops placing clients here), end the streams, then
    // stop following the topics.
    sup.step();
    let (l, announced_url, r) = (log.clone(), url.clone(), ready.clone());
    sup.spawn(format!("announce-{c}.{id}"), move |stop| async move {
        tokio::select! {
            () = r.cancelled() => {}
            () = stop.cancelled() => return Ok::<(), LogError>(()),
        }
        let here = Announcement { cluster: c, subscriber: id, url: Some(announced_url) };
        l.append(vec![Entry::Subscriber(here).to_output()]).await?;
        stop.cancelled().await;
        l.append(vec![Entry::Subscriber(Announcement { cluster: c, subscriber: id, url: None }).to_output()]).await
    });
    sup.step();
    let r = ready.clone();
    sup.spawn("api-http", move |stop| async move {
        // Connections wait in the listen queue until this subscriber has read its topics.
        tokio::select! {
            () = r.cancelled() => {}
            () = stop.cancelled() => {}
        }
        let (ss, s2) = (streams_shutdown, stop.clone());
        tokio::spawn(async move {
            s2.cancelled().await;
            ss.cancel();
        });
        http::serve_http1(listener, app, serve, stop).await
    });
    sup.step();
    let (l, h, replay) = (log.clone(), hub.clone(), s.history as u64);
    sup.spawn(format!("subscriber-{c}.{id}"), move |stop| subscriber::run(l, h, replay, stop));
    let (l, reg, rr) = (log.clone(), registry.clone(), registry_ready.clone());
    sup.spawn("registry-follower", move |stop| registry::follow(l, reg, rr, stop));

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
pub async fn start_registry(log: Arc<dyn Log>, s: RegistryStage) -> Result<Started, TopologyError> {
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
    let serve = s.serve;

    let mut sup = Supervisor::new();
    sup.readiness().watch_log(log.clone());
    let app = http::api::registry_app(state).merge(http::probe::routes(sup.readiness()));
    sup.step();
    let rr = registry_ready.clone();
    sup.spawn("api-http", move |stop| async move {
        // Placing clients needs the current map: serve once the topic is read.
        tokio::select! {
            () = rr.cancelled() => {}
            () = stop.cancelled() => {}
        }
        http::serve_http1(listener, app, serve, stop).await
    });
    sup.step();
    let (l, reg, rr) = (log.clone(), registry.clone(), registry_ready.clone());
    sup.spawn("registry-follower", move |stop| registry::follow(l, reg, rr, stop));
    let (l, h, cap) = (log.clone(), history_store, s.history as u64);
    sup.spawn("history", move |stop| history::run(l, h, cap, stop));

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
    started.run_until(topology::shutdown_signal()).await.context("stopped with an error")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `emostream ingest`.
///
/// # Errors
/// When Kafka cannot be reached, the address is taken, or the stage fails.
pub async fn ingest(a: IngestArgs) -> anyhow::Result<()> {
    raise_nofile_limit();
    let emojis = a.ingest.emoji_set()?;
    let log = connect(&a.kafka).await.context("ingest cannot start")?;
    let stage = IngestStage {
        addr: a.ingest.ingest_addr,
        emojis,
        config: a.ingest.ingest_config(a.partitions.partitions),
        limits: a.ingest.limits(),
        serve: a.serve.limits(),
    };
    serve(start_ingest(log, stage).await.context("ingest cannot start")?).await
}

/// `emostream aggregate`.
///
/// # Errors
/// When Kafka cannot be reached or the stage fails.
pub async fn aggregate(a: AggregateArgs) -> anyhow::Result<()> {
    // The recorder goes in before the stage registers its counters.
    let _ = telemetry::prometheus();
    let log = connect(&a.kafka).await.context("aggregate cannot start")?;
    let instance_id = a.instance.instance_id.clone().or_else(|| a.id.map(|n| format!("aggregate-{n}")));
    match &instance_id {
        Some(id) => tracing::info!(instance_id = %id, "static group member: a restart with this id resumes at once"),
        None => tracing::info!(
            "no --id or --instance-id: a dynamic group member (after a kill -9, its partitions wait for the session and transaction timeouts)"
        ),
    }
    let config = aggregate::AggregateConfig { window: a.window.spec(), grace: a.grace.grace, instance_id };
    let started = start_aggregate(log, config, a.partitions.partitions).await.context("aggregate cannot start")?;
    serve(with_metrics(started, a.metrics.metrics_addr).await?).await
}

/// `emostream publish`.
///
/// # Errors
/// When the `--emotions` file cannot be used, Kafka cannot be reached or the stage fails.
pub async fn publish(a: PublishArgs) -> anyhow::Result<()> {
    let mut config = a.publish.publish_config(&a.window)?;
    config.instance_id = Some(a.instance.instance_id.clone().unwrap_or_else(|| "publish".to_owned()));
    let _ = telemetry::prometheus();
    let log = connect(&a.kafka).await.context("publish cannot start")?;
    let started = start_publish(log, config, a.partitions.partitions).await.context("publish cannot start")?;
    serve(with_metrics(started, a.metrics.metrics_addr).await?).await
}

/// `emostream cluster --id N`.
///
/// # Errors
/// When Kafka cannot be reached or the stage fails.
pub async fn cluster(a: ClusterArgs) -> anyhow::Result<()> {
    let id = a.id.context("--id is required")?;
    let _ = telemetry::prometheus();
    let log = connect(&a.kafka).await.with_context(|| format!("cluster {id} cannot start"))?;
    let instance_id = a.instance.instance_id.clone().unwrap_or_else(|| format!("cluster-{id}"));
    let started =
        start_cluster(log, id, Some(instance_id), a.partitions.partitions).await.with_context(|| format!("cluster {id} cannot start"))?;
    serve(with_metrics(started, a.metrics.metrics_addr).await?).await
}

/// `emostream subscriber --cluster N --id M`.
///
/// # Errors
/// When Kafka cannot be reached, the address is taken, or the stage fails.
pub async fn subscriber(a: SubscriberArgs) -> anyhow::Result<()> {
    raise_nofile_limit();
    let (cluster, id) = (a.cluster.context("--cluster is required")?, a.id.context("--id is required")?);
    let what = || format!("subscriber {cluster}.{id} cannot start");
    let log = connect(&a.kafka).await.with_context(what)?;
    let stage = SubscriberStage {
        cluster,
        id,
        api_addr: a.api_addr(),
        advertise: a.advertise.clone(),
        history: a.history.windows(),
        partitions: a.partitions.partitions,
        serve: a.serve.limits(),
    };
    serve(start_subscriber(log, stage).await.with_context(what)?).await
}

/// `emostream registry`.
///
/// # Errors
/// When Kafka cannot be reached, the address is taken, or the stage fails.
pub async fn registry(a: RegistryArgs) -> anyhow::Result<()> {
    let log = connect(&a.kafka).await.context("the registry cannot start")?;
    let stage = RegistryStage {
        api_addr: a.api_addr,
        clusters: a.topology.clusters,
        subscribers: a.topology.subscribers,
        history: a.history.windows(),
        partitions: a.partitions.partitions,
        serve: a.serve.limits(),
    };
    serve(start_registry(log, stage).await.context("the registry cannot start")?).await
}

/// One socket per client: processes that hold many need more than the usual 1024 open files.
fn raise_nofile_limit() {
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
