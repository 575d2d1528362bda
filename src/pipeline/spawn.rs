//! One function per stage that adds the stage's tasks to a [`Supervisor`]: `emostream up` and every
//! stage process are composed from these, so a stage is wired in one place.
//!
//! A function that adds one task adds it to the supervisor's current shutdown step (the caller
//! opens steps with [`Supervisor::step`] to order shutdown); one that needs an order of its own
//! (ingest: stop taking requests, then append what was acknowledged) opens its steps itself.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::supervisor::Supervisor;
use crate::core::emoji::EmojiSet;
use crate::http;
use crate::http::ingest::IngestLimits;
use crate::log::{Log, LogError, topics};
use crate::stages::history::History;
use crate::stages::registry::{self, Announcement, Entry, Registry};
use crate::stages::subscriber::Hub;
use crate::stages::{aggregate, cluster, history, ingest, publish, subscriber};

/// Everything the ingest stage needs: its API and its batching.
#[derive(Debug, Clone)]
pub struct IngestStage {
    pub addr: SocketAddr,
    pub emojis: EmojiSet,
    /// Its `partitions` is what to create `emoji_topic` with.
    pub config: ingest::IngestConfig,
    pub limits: IngestLimits,
    pub serve: http::ServeLimits,
}

/// Whether a listener serves `GET /metrics`: in `emostream up` only the API port does, so that a
/// scrape of both ports does not count every series twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metrics {
    Served,
    NotHere,
}

/// Ingest: its HTTP API, then its batcher, in two shutdown steps of their own (stop taking
/// requests first, then append everything acknowledged). `s.config.partitions` must be the actual
/// partition count of `emoji_topic`.
pub fn spawn_ingest(sup: &mut Supervisor, log: Arc<dyn Log>, listener: TcpListener, s: IngestStage, metrics: Metrics) {
    let (handle, batcher) = ingest::ingest(log, s.emojis.clone(), s.config);
    let mut state = http::ingest::IngestState::new(handle, s.emojis, crate::telemetry::prometheus());
    if metrics == Metrics::NotHere {
        state = state.without_metrics();
    }
    let app = http::ingest::app(state, s.limits).merge(http::probe::routes(sup.readiness()));
    sup.step();
    sup.spawn("ingest-http", move |stop| http::serve_http1(listener, app, s.serve, stop));
    sup.step();
    sup.spawn("ingest-batcher", |stop| batcher.run(stop));
}

/// An aggregator: `emoji_topic` (its share of the partitions) into partials.
pub fn spawn_aggregate(sup: &mut Supervisor, log: Arc<dyn Log>, config: aggregate::AggregateConfig) {
    sup.spawn("aggregate", move |stop| aggregate::run(log, config, stop));
}

/// The main publisher: partials into one swarm per window on `main_topic`.
pub fn spawn_publish(sup: &mut Supervisor, log: Arc<dyn Log>, config: publish::PublishConfig) {
    sup.spawn("publish", move |stop| publish::run(log, config, stop));
}

/// Cluster publisher `config.id`: `main_topic` into its cluster topic.
pub fn spawn_cluster(sup: &mut Supervisor, log: Arc<dyn Log>, config: cluster::ClusterConfig) {
    sup.spawn(format!("cluster-{}", config.id), move |stop| cluster::run(log, config, stop));
}

/// Subscriber `cluster.id`: its cluster topic into `hub`, replaying the last `replay` windows at start.
pub fn spawn_subscriber(sup: &mut Supervisor, log: Arc<dyn Log>, (cluster, id): (u32, u32), hub: Arc<Hub>, replay: usize) {
    sup.spawn(format!("subscriber-{cluster}.{id}"), move |stop| subscriber::run(log, hub, replay as u64, stop));
}

/// The windows behind `GET /windows`: the last `cap` of `main_topic` into `store`.
pub fn spawn_history(sup: &mut Supervisor, log: Arc<dyn Log>, store: Arc<History>, cap: usize) {
    sup.spawn("history", move |stop| history::run(log, store, cap as u64, stop));
}

/// A copy of the registry kept from the subscriptions topic; `ready` is cancelled once it has read
/// what the topic held at start.
pub fn spawn_registry_follower(sup: &mut Supervisor, log: Arc<dyn Log>, registry: Arc<Registry>, ready: CancellationToken) {
    sup.spawn("registry-follower", move |stop| registry::follow(log, registry, ready, stop));
}

/// Once `ready`, tells the registry on the subscriptions topic that subscriber `cluster.id` serves
/// at `url`; at shutdown, that it left (so no client is placed there any more).
pub fn spawn_announce(sup: &mut Supervisor, log: Arc<dyn Log>, (cluster, id): (u32, u32), url: String, ready: CancellationToken) {
    sup.spawn(format!("announce-{cluster}.{id}"), move |stop| async move {
        tokio::select! {
            () = ready.cancelled() => {}
            () = stop.cancelled() => return Ok::<(), LogError>(()),
        }
        let here = Announcement { cluster, subscriber: id, url: Some(url) };
        log.append(vec![Entry::Subscriber(here).to_output()]).await?;
        stop.cancelled().await;
        log.append(vec![Entry::Subscriber(Announcement { cluster, subscriber: id, url: None }).to_output()]).await
    });
}

/// The subscription and delivery API. Its client streams end (after their last window) when it is
/// asked to stop, through `streams_shutdown`. With `gate`, connections wait in the listen queue
/// until it is cancelled (the process has read its topics).
pub fn spawn_api(
    sup: &mut Supervisor,
    listener: TcpListener,
    app: axum::Router,
    serve: http::ServeLimits,
    streams_shutdown: CancellationToken,
    gate: Option<CancellationToken>,
) {
    sup.spawn("api-http", move |stop| async move {
        if let Some(gate) = gate {
            tokio::select! {
                () = gate.cancelled() => {}
                () = stop.cancelled() => {}
            }
        }
        let s = stop.clone();
        tokio::spawn(async move {
            s.cancelled().await;
            streams_shutdown.cancel();
        });
        http::serve_http1(listener, app, serve, stop).await
    });
}

/// Creates the topics every stage reads or writes, plus the topics of clusters `1..=clusters`;
/// returns the actual partition count of `emoji_topic` (it may exist with another).
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
