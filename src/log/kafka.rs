//! Apache Kafka implementation of the log, through rdkafka (bundled librdkafka).
//!
//! - [`Log::append`] is an idempotent producer with `acks=all`: it returns once every record is
//!   acknowledged by the in-sync replicas, so ingest's 200 in `--ack durable` means "in Kafka".
//! - A grouped [`Consumer`] reads `read_committed` and owns a transactional producer. Its
//!   [`Consumer::commit`] is one transaction: the outputs, the consumer offsets and each partition's
//!   checkpoint (carried in the offset-commit metadata), all or nothing. The group generation goes
//!   with the offsets (KIP-447), so a zombie that lost its partitions in a rebalance is fenced.
//! - Rebalances are eager: every partition is revoked, then the new assignment is handed out with
//!   the committed offsets and checkpoints, read in the rebalance callback before fetching starts.
//! - When the broker aborts a commit that can be retried (a rebalance underway, a coordinator
//!   moving), the consumer rewinds to the committed positions and reports it as `Revoked` then
//!   `Assigned`, which every stage already handles: the aborted outputs are never visible.
//! - Between the rebalance callback (which runs inside a poll) and the stage seeing `Revoked`, a
//!   commit is skipped: the partitions may already belong to another member of the new generation.
//!
//! librdkafka's calls block, so each runs on tokio's blocking pool.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, FutureProducer, FutureRecord, Producer as _, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::{Assignment, Consumer, ConsumerConfig, Log, LogError, Output, Polled, Position, Record, StartAt};

/// How a process reaches Kafka.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`.
    pub brokers: String,
    /// Prefix of every topic, group and transactional id (`""`: none), so that several pipelines
    /// (or tests) share one cluster.
    pub namespace: String,
    /// Replication factor of topics this process creates.
    pub replication: i16,
    /// How long to wait for the broker at start before giving up with a clear error.
    pub connect_timeout: Duration,
    /// Producer linger for [`Log::append`] (how long librdkafka waits to fill a batch).
    pub linger: Duration,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            namespace: String::new(),
            replication: 1,
            connect_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(5),
        }
    }
}

/// How long a blocking metadata or transaction call may take before it counts as a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Records handed out by one poll at most.
const MAX_POLL_RECORDS: usize = 5_000;

static CONSUMER_SEQ: AtomicU64 = AtomicU64::new(0);

/// The Kafka log. Cheap to share behind an `Arc`.
pub struct KafkaLog {
    config: KafkaConfig,
    producer: FutureProducer<Quiet>,
    admin: AdminClient<Quiet>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog").field("brokers", &self.config.brokers).field("namespace", &self.config.namespace).finish()
    }
}

fn unreachable(config: &KafkaConfig, e: impl std::fmt::Display) -> LogError {
    LogError::Unreachable { addr: config.brokers.clone(), why: e.to_string() }
}

fn other(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Other(format!("kafka: {what}: {e}"))
}

/// What one try of a retried call asks for.
enum Retry {
    /// Try again after a back-off; the reason goes to the operator (rate-limited).
    Again(String),
    GiveUp(LogError),
}

/// Runs `f` until it succeeds or gives up, backing off 100 ms doubling to 2 s between tries. Blocking:
/// for librdkafka calls already on the blocking pool.
fn with_backoff<T>(quiet: &Quiet, mut f: impl FnMut() -> Result<T, Retry>) -> Result<T, LogError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match f() {
            Ok(t) => return Ok(t),
            Err(Retry::GiveUp(e)) => return Err(e),
            Err(Retry::Again(why)) => {
                quiet.report(&why);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The offsets of `assigned` as a partition list of `topic`, to assign or seek.
fn offsets_list(topic: &str, assigned: &[Assignment]) -> Result<TopicPartitionList, LogError> {
    let mut tpl = TopicPartitionList::new();
    for a in assigned {
        tpl.add_partition_offset(topic, a.partition as i32, Offset::Offset(a.offset as i64))
            .map_err(|e| other("listing partition offsets", e))?;
    }
    Ok(tpl)
}

fn base_client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", format!("emostream-{}", std::process::id()))
        // Say so quickly when the broker goes away; librdkafka keeps retrying underneath.
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("reconnect.backoff.max.ms", "1000")
        .set_log_level(RDKafkaLogLevel::Warning)
        // Errors come through the context (one warning per 10 s), not as a log line per attempt.
        .set("log.connection.close", "false");
    // For a stall nobody can explain yet: librdkafka's own debug log (its contexts, e.g.
    // `cgrp,eos,fetch`), shown with `RUST_LOG=librdkafka=debug`.
    if let Ok(contexts) = std::env::var("EMOSTREAM_KAFKA_DEBUG") {
        c.set("debug", contexts).set_log_level(RDKafkaLogLevel::Debug);
    }
    c
}

impl KafkaLog {
    /// Connects and checks that the broker answers within `connect_timeout`.
    ///
    /// # Errors
    /// [`LogError::Unreachable`] when no broker answers; [`LogError::Other`] for a bad configuration.
    pub async fn connect(config: KafkaConfig) -> Result<Self, LogError> {
        let mut pc = base_client_config(&config);
        pc.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.linger.as_millis().to_string())
            .set("message.timeout.ms", "120000")
            .set("compression.type", "lz4");
        let producer: FutureProducer<Quiet> =
            pc.create_with_context(Quiet::new(&config.brokers)).map_err(|e| other("creating the producer", e))?;
        let admin: AdminClient<Quiet> = base_client_config(&config)
            .create_with_context(Quiet::new(&config.brokers))
            .map_err(|e| other("creating the admin client", e))?;
        let log = Self { config, producer, admin };
        let timeout = log.config.connect_timeout;
        let client = log.producer.clone();
        let cfg = log.config.clone();
        tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, timeout).map(|_| ()))
            .await
            .map_err(|e| other("metadata", e))?
            .map_err(|e| unreachable(&cfg, format!("no answer within {timeout:?} ({e})")))?;
        Ok(log)
    }

    /// The broker-side name of a topic, group or transactional id.
    pub fn name(&self, base: &str) -> String {
        namespaced(&self.config.namespace, base)
    }

    async fn topic_partitions(&self, topic: &str, timeout: Duration) -> Result<Option<u32>, LogError> {
        let client = self.producer.clone();
        let name = self.name(topic);
        let cfg = self.config.clone();
        tokio::task::spawn_blocking(move || {
            let md = client.client().fetch_metadata(Some(&name), timeout).map_err(|e| unreachable(&cfg, e))?;
            let Some(t) = md.topics().iter().find(|t| t.name() == name) else { return Ok(None) };
            match t.error() {
                None if !t.partitions().is_empty() => Ok(Some(t.partitions().len() as u32)),
                _ => Ok(None),
            }
        })
        .await
        .map_err(|e| other("metadata", e))?
    }
}

/// How long a topic that another process (or this one) has just created may take to show in the
/// metadata of every broker of a cluster.
const METADATA_SETTLE: Duration = Duration::from_secs(5);

impl KafkaLog {
    /// The partitions of `topic`, waiting up to [`METADATA_SETTLE`] for it to appear: on a cluster,
    /// brokers learn of a new topic one after the other, so the broker asked may not know yet of a
    /// topic created a moment ago through another (seen: a subscriber failing at start with "topic
    /// `cluster2` does not exist" right after creating it).
    async fn existing_partitions(&self, topic: &str) -> Result<Option<u32>, LogError> {
        let deadline = Instant::now() + METADATA_SETTLE;
        loop {
            if let Some(n) = self.topic_partitions(topic, CALL_TIMEOUT).await? {
                return Ok(Some(n));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// librdkafka reports every failed connection attempt, many per second while a broker is away.
/// This context turns them into one operator-readable warning per [`QUIET_EVERY`] per client.
#[derive(Debug)]
pub struct Quiet {
    brokers: String,
    last: Mutex<Option<Instant>>,
}

const QUIET_EVERY: Duration = Duration::from_secs(10);

impl Quiet {
    fn new(brokers: &str) -> Self {
        Self { brokers: brokers.to_owned(), last: Mutex::new(None) }
    }

    fn report(&self, what: &str) {
        let mut last = self.last.lock().expect("kafka log lock poisoned");
        if last.is_some_and(|l| l.elapsed() < QUIET_EVERY) {
            tracing::debug!(brokers = %self.brokers, "{what}");
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(brokers = %self.brokers, "Kafka trouble: {what} (retrying; is the broker up? `scripts/kafka status`)");
    }
}

/// The transactional producer learns of failed deliveries from `commit_transaction`.
impl rdkafka::producer::ProducerContext for Quiet {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, (): ()) {}
}

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                self.report(&format!("{fac}: {message}"));
            }
            _ => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.report(&format!("{error}: {reason}"));
    }
}

fn namespaced(namespace: &str, base: &str) -> String {
    if namespace.is_empty() { base.to_owned() } else { format!("{namespace}.{base}") }
}

#[async_trait]
impl Log for KafkaLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32, compacted: bool) -> Result<u32, LogError> {
        if let Some(n) = self.topic_partitions(topic, CALL_TIMEOUT).await? {
            return Ok(n);
        }
        let name = self.name(topic);
        let mut new = NewTopic::new(&name, partitions as i32, TopicReplication::Fixed(i32::from(self.config.replication)));
        if compacted {
            new = new.set("cleanup.policy", "compact").set("segment.ms", "60000").set("min.cleanable.dirty.ratio", "0.1");
        }
        let opts = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
        let results = self.admin.create_topics([&new], &opts).await.map_err(|e| unreachable(&self.config, e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(other(&format!("creating topic `{t}`"), code)),
            }
        }
        tracing::info!(topic = %name, partitions, compacted, "created topic");
        // Metadata catches up with the creation shortly after.
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            if let Some(n) = self.topic_partitions(topic, CALL_TIMEOUT).await? {
                return Ok(n);
            }
            if Instant::now() > deadline {
                return Err(other(&format!("topic `{name}`"), "created but not visible in metadata after 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        self.existing_partitions(topic).await?.ok_or_else(|| LogError::NoSuchTopic(self.name(topic)))
    }

    /// A metadata request that a broker must answer (librdkafka's cached metadata does not count).
    async fn ping(&self) -> Result<(), LogError> {
        self.topic_partitions(super::topics::EVENTS, Duration::from_secs(2)).await.map(|_| ())
    }

    async fn append(&self, outputs: Vec<Output>) -> Result<(), LogError> {
        let names: Vec<String> = outputs.iter().map(|o| self.name(&o.topic)).collect();
        let mut pending = Vec::with_capacity(outputs.len());
        for (o, topic) in outputs.iter().zip(&names) {
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(&o.payload[..]);
            if let Some(k) = &o.key {
                rec = rec.key(&k[..]);
            }
            if let Some(p) = o.partition {
                rec = rec.partition(p as i32);
            }
            // Enqueue without waiting for room; a full local queue is an error the caller sees.
            match self.producer.send_result(rec) {
                Ok(f) => pending.push(f),
                Err((e, _)) => return Err(append_error(&self.config, &e)),
            }
        }
        for f in pending {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(append_error(&self.config, &e)),
                Err(_) => return Err(LogError::Closed),
            }
        }
        Ok(())
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, LogError> {
        let topic = self.name(&config.topic);
        let Some(partitions) = self.existing_partitions(&config.topic).await? else {
            return Err(LogError::NoSuchTopic(topic));
        };
        let seq = CONSUMER_SEQ.fetch_add(1, Ordering::Relaxed);
        let log_config = self.config.clone();
        let ns = self.config.namespace.clone();
        let consumer = tokio::task::spawn_blocking(move || KafkaConsumer::create(&log_config, &ns, topic, partitions, config, seq))
            .await
            .map_err(|e| other("creating a consumer", e))??;
        Ok(Box::new(consumer))
    }

    fn describe(&self) -> String {
        if self.config.namespace.is_empty() {
            format!("kafka at {}", self.config.brokers)
        } else {
            format!("kafka at {} (namespace `{}`)", self.config.brokers, self.config.namespace)
        }
    }
}

fn append_error(config: &KafkaConfig, e: &KafkaError) -> LogError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => LogError::Other("kafka: the producer's local queue is full".into()),
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure) => {
            unreachable(config, e)
        }
        _ => other("append", e),
    }
}

/// What the rebalance callback leaves for [`Consumer::poll`].
#[derive(Default)]
struct Events {
    queue: VecDeque<Result<Polled, LogError>>,
}

struct Ctx {
    topic: String,
    start: StartAt,
    events: Mutex<Events>,
    quiet: Quiet,
    /// When librdkafka last said this member's group session timed out.
    session_lost: Mutex<Option<Instant>>,
    /// The next offset to read of each assigned partition, as assigned, sought or read: librdkafka's
    /// own position stays unknown until a partition brings a record, and a partition that stalls
    /// right after an assignment never does (see [`Inner::unstall`]).
    next: Mutex<std::collections::BTreeMap<u32, u64>>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "SESSTMOUT" || message.contains("session timed out") {
            *self.session_lost.lock().expect("kafka session lock poisoned") = Some(Instant::now());
        }
        self.quiet.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(error, reason);
    }
}

impl Ctx {
    fn push(&self, e: Result<Polled, LogError>) {
        self.events.lock().expect("kafka events lock poisoned").queue.push_back(e);
    }

    fn pop(&self) -> Option<Result<Polled, LogError>> {
        self.events.lock().expect("kafka events lock poisoned").queue.pop_front()
    }

    fn pending(&self) -> bool {
        !self.events.lock().expect("kafka events lock poisoned").queue.is_empty()
    }

    /// Where each partition starts: its committed offset and checkpoint, or the configured start.
    fn resolve(&self, consumer: &BaseConsumer<Self>, partitions: &[u32], grouped: bool) -> Result<Vec<Assignment>, LogError> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.topic, p as i32);
        }
        let committed = if grouped {
            Some(consumer.committed_offsets(tpl, CALL_TIMEOUT).map_err(|e| other("reading committed offsets", e))?)
        } else {
            None
        };
        if let Some(c) = &committed {
            // A partition whose committed offset could not be read (e.g. a transaction that committed
            // it is still settling) must not look like one that never committed: that would replay
            // it from the start and count it twice.
            for e in c.elements() {
                if let Err(err) = e.error() {
                    return Err(other(&format!("reading the committed offset of partition {}", e.partition()), err));
                }
            }
        }
        let mut out = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let found = committed.as_ref().and_then(|c| c.find_partition(&self.topic, p as i32)).and_then(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => {
                    let meta = e.metadata();
                    Some((o as u64, (!meta.is_empty()).then(|| meta.to_owned())))
                }
                _ => None,
            });
            let (offset, checkpoint) = match found {
                Some(f) => f,
                None => {
                    let (low, high) =
                        consumer.fetch_watermarks(&self.topic, p as i32, CALL_TIMEOUT).map_err(|e| other("reading partition bounds", e))?;
                    let (low, high) = (low.max(0) as u64, high.max(0) as u64);
                    let o = match self.start {
                        StartAt::Earliest => low,
                        StartAt::Latest => high,
                        // Transaction markers take offsets too: reach back twice as far.
                        StartAt::Tail(n) => high.saturating_sub(n.saturating_mul(2)).max(low),
                    };
                    (o, None)
                }
            };
            out.push(Assignment { partition: p, offset, checkpoint });
        }
        Ok(out)
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, partitions: &[u32], grouped: bool) -> Result<Vec<Assignment>, LogError> {
        let mut tries = 0;
        let assigned = with_backoff(&self.quiet, || {
            tries += 1;
            self.resolve(consumer, partitions, grouped).map_err(|e| match tries {
                ..10 => Retry::Again(format!("cannot read where to resume `{}` yet (try {tries}): {e}", self.topic)),
                _ => Retry::GiveUp(e),
            })
        })?;
        consumer.assign(&offsets_list(&self.topic, &assigned)?).map_err(|e| other("assigning partitions", e))?;
        self.note_next(&assigned);
        Ok(assigned)
    }

    /// Notes where each of `assigned` reads next, and forgets the partitions not among them.
    fn note_next(&self, assigned: &[Assignment]) {
        let mut next = self.next.lock().expect("kafka positions lock poisoned");
        next.clear();
        next.extend(assigned.iter().map(|a| (a.partition, a.offset)));
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let partitions: Vec<u32> = tpl.elements().iter().map(|e| e.partition() as u32).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => match self.assign(consumer, &partitions, true) {
                Ok(a) => self.push(Ok(Polled::Assigned(a))),
                Err(e) => {
                    let _ = consumer.unassign();
                    self.push(Err(e));
                }
            },
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let _ = consumer.unassign();
                self.note_next(&[]);
                self.push(Ok(Polled::Revoked(partitions)));
            }
            other_err => {
                tracing::warn!(error = ?other_err, "kafka rebalance error; giving up the assignment");
                let _ = consumer.unassign();
                self.push(Ok(Polled::Revoked(partitions)));
            }
        }
    }
}

struct Inner {
    consumer: BaseConsumer<Ctx>,
    /// Transactional producer bound to this consumer (grouped consumers only). `std::sync::Mutex`:
    /// only commits (on the blocking pool, one at a time) take it, to use or replace the producer.
    producer: Option<Mutex<Txn>>,
    /// To create a new transactional producer after a fatal error.
    log: KafkaConfig,
    grouped: bool,
    /// The group's broker-side name, for errors.
    group: String,
    /// Records read in the poll that also brought a rebalance: handed out after its events.
    stashed: Mutex<Vec<Record>>,
    namespace: String,
    /// When a poll last brought records, and when [`Inner::unstall`] last looked.
    progress: Mutex<(Instant, Instant)>,
    /// The group refused this member's offsets while the consumer itself stayed healthy: it must
    /// join again (see [`Inner::commit`]).
    stale_member: std::sync::atomic::AtomicBool,
}

/// How long a consumer may bring nothing while its partitions hold unread records before
/// [`Inner::unstall`] restarts their fetch.
const STALL_AFTER: Duration = Duration::from_secs(10);

/// What [`KafkaConsumer::rejoin_or_stop`] decided.
enum Rejoin {
    /// Not fenced: the error stands.
    No,
    /// Fenced, as by its own previous session: join the group again.
    Yes,
    /// Fenced again soon after joining again: a twin holds the instance id; stop with this error.
    Twin(LogError),
}

/// A Kafka consumer with its transactional producer.
pub struct KafkaConsumer {
    inner: Option<Arc<Inner>>,
    /// How `inner` was made, to make it again after librdkafka fenced it by mistake.
    recipe: Recipe,
    /// The partitions the stage was last told it owns (for the `Revoked` of a rebuild).
    owned: std::collections::BTreeSet<u32>,
    /// A poll still running on the blocking pool: a caller that stops waiting (a `select!` at
    /// shutdown) must not lose what it brings, so the next poll (or commit) picks it up.
    inflight: Option<tokio::task::JoinHandle<Result<Polled, LogError>>>,
    /// What an in-flight poll brought while a commit waited for it, for the next poll.
    ready: Option<Result<Polled, LogError>>,
    /// When [`KafkaConsumer::rebuild`] last joined the group again.
    rebuilt: Option<Instant>,
}

/// What a consumer is made of.
#[derive(Clone)]
struct Recipe {
    log: KafkaConfig,
    ns: String,
    topic: String,
    /// How many partitions `topic` has, as [`KafkaLog::consumer`] found (an ungrouped reader
    /// assigns itself all of them).
    partitions: u32,
    config: ConsumerConfig,
    seq: u64,
}

/// A static member fenced again within this long of joining again, with no session lost in between,
/// shares its instance id with another live process (see [`KafkaConsumer::rejoin_or_stop`]).
const TWIN_SPAN: Duration = Duration::from_secs(60);

impl KafkaConsumer {
    fn create(log: &KafkaConfig, ns: &str, topic: String, partitions: u32, config: ConsumerConfig, seq: u64) -> Result<Self, LogError> {
        let recipe = Recipe { log: log.clone(), ns: ns.to_owned(), topic, partitions, config, seq };
        let inner = Self::build(&recipe)?;
        Ok(Self { inner: Some(Arc::new(inner)), recipe, owned: Default::default(), inflight: None, ready: None, rebuilt: None })
    }

    fn build(recipe: &Recipe) -> Result<Inner, LogError> {
        let Recipe { log, ns, topic, partitions, config, seq } = recipe;
        let (ns, topic, seq) = (ns.as_str(), topic.clone(), *seq);
        let pid = std::process::id();
        let grouped = config.group.is_some();
        let group = match &config.group {
            Some(g) => namespaced(ns, g),
            // An ungrouped reader never commits; librdkafka still wants a group id.
            None => namespaced(ns, &format!("emostream-reader-{pid}-{seq}")),
        };
        let mut cc = base_client_config(log);
        cc.set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "roundrobin")
            // A dead member's partitions move on within seconds.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1500")
            .set("max.poll.interval.ms", "60000")
            .set("fetch.wait.max.ms", "25")
            .set("auto.offset.reset", "earliest");
        if let (true, Some(instance)) = (grouped, &config.instance_id) {
            // Static membership (KIP-345): a restarted process with the same id gets its partitions
            // back at once instead of after a session timeout, and a second live process with the
            // same id fences the first (which then stops, saying so).
            cc.set("group.instance.id", namespaced(ns, instance));
        }
        let ctx = Ctx {
            topic: topic.clone(),
            start: config.start,
            events: Mutex::default(),
            quiet: Quiet::new(&log.brokers),
            session_lost: Mutex::default(),
            next: Mutex::default(),
        };
        let consumer: BaseConsumer<Ctx> = cc.create_with_context(ctx).map_err(|e| other("creating a consumer", e))?;
        let producer = if grouped {
            let txid = namespaced(ns, &transactional_id(config, pid, seq));
            let p = create_transactional(log, &txid).map_err(|e| tx_error(&e, &format!("starting transactional id `{txid}`")))?;
            Some(Mutex::new(Txn { producer: Arc::new(p), id: txid }))
        } else {
            None
        };
        if grouped {
            consumer.subscribe(&[&topic]).map_err(|e| other(&format!("subscribing to `{topic}`"), e))?;
        } else {
            // Not from this consumer's own metadata: on a cluster, the broker it asks may not know
            // yet of a topic created a moment ago, and answers with no partitions; the reader then
            // assigned itself nothing and never read (seen: a subscriber that served no window in
            // kafka_cluster, with every stage before it working).
            let partitions: Vec<u32> = (0..*partitions).collect();
            let assigned = consumer.context().assign(&consumer, &partitions, false)?;
            consumer.context().push(Ok(Polled::Assigned(assigned)));
        }
        Ok(Inner {
            consumer,
            producer,
            log: log.clone(),
            grouped,
            group,
            stashed: Mutex::default(),
            namespace: ns.to_owned(),
            progress: Mutex::new((Instant::now(), Instant::now())),
            stale_member: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Replaces a fenced consumer (and its producer) with a new one under the same ids; returns the
    /// `Revoked` the stage must see (the new one's assignment comes as `Assigned`).
    ///
    /// Why: after a static member's session times out (the broker away, the machine stalled),
    /// librdkafka rejoins with the same `group.instance.id`, and a response meant for its previous
    /// member id then reports FENCED_INSTANCE_ID, a fatal error (librdkafka issue #3437): the
    /// consumer is dead although no other process has the id. Seen in `kafka_outage` after the
    /// broker's restart. Joining again with the same id is exactly what a restarted process does.
    async fn rebuild(&mut self) -> Result<Polled, LogError> {
        tracing::warn!(
            topic = %self.recipe.topic,
            instance_id = ?self.recipe.config.instance_id,
            "kafka: this stage was fenced on its instance id, as by its own previous session (after a session timeout or a \
             coordinator's failover); joining the group again with the same instance id and resuming from the last commit. \
             If another process holds the id, it is fenced again within {TWIN_SPAN:?} and stops"
        );
        if let Some(old) = self.inner.take() {
            let _ = std::thread::Builder::new().name("kafka-close".into()).spawn(move || drop(old));
        }
        let recipe = self.recipe.clone();
        let quiet = Quiet::new(&recipe.log.brokers);
        let inner = tokio::task::spawn_blocking(move || {
            with_backoff(&quiet, || Self::build(&recipe).map_err(|e| Retry::Again(format!("joining the group again: {e}"))))
        })
        .await
        .map_err(|e| other("rebuilding a consumer", e))??;
        self.inner = Some(Arc::new(inner));
        self.rebuilt = Some(Instant::now());
        Ok(Polled::Revoked(std::mem::take(&mut self.owned).into_iter().collect()))
    }

    /// After a failed poll or commit with `e`: whether this consumer was fenced (on its instance id
    /// or its transactional id) and should join the group again, or stop as a twin.
    ///
    /// Who fenced it cannot be asked of librdkafka: its own previous session (a rejoin after a
    /// session timeout or a coordinator's failover, librdkafka issue #3437) and another live
    /// process with the same id give the same FENCED_INSTANCE_ID. Timing cannot tell them apart
    /// either: under load, a self-fence came with no session timeout logged at all (kafka_outage
    /// on a busy machine), and after a coordinator's broker was killed as well (kafka_cluster).
    /// What does tell them apart is what happens after joining again: alone, the member stays;
    /// with a twin, each join fences the other, so the twin's join fences this one again within
    /// seconds. So: the first fence, or one after a quiet [`TWIN_SPAN`] or a session lost since,
    /// joins again; a second one soon after stops this process, saying why. Of two processes with
    /// one id, one stops and the other carries on: mostly the one that held it first (its rejoin
    /// fences the newcomer once, the newcomer's rejoin fences it twice), the newcomer when the
    /// first one's rejoin lands after the newcomer's.
    fn rejoin_or_stop(&self, e: &LogError) -> Rejoin {
        let inner = self.inner();
        if !matches!(e, LogError::Fenced(_)) && !inner.fenced() {
            return Rejoin::No;
        }
        match self.rebuilt {
            Some(t) if t.elapsed() < TWIN_SPAN && !inner.session_lost_since(t) => {
                let cause = match (inner.consumer.client().fatal_error(), e) {
                    (Some((_, why)), _) => why,
                    (None, LogError::Fenced(why)) => why.clone(),
                    (None, e) => e.to_string(),
                };
                Rejoin::Twin(LogError::Fenced(format!(
                    "fenced again {:.1?} after joining group `{}` again with instance id {:?} ({cause}): another live process \
                     holds that instance id, and this one stops. Give each process its own --instance-id",
                    t.elapsed(),
                    inner.group,
                    self.recipe.config.instance_id.as_deref().unwrap_or("(none)"),
                )))
            }
            _ => Rejoin::Yes,
        }
    }

    /// Notes what the stage is told it owns.
    fn track(&mut self, r: &Result<Polled, LogError>) {
        match r {
            Ok(Polled::Assigned(a)) => self.owned.extend(a.iter().map(|a| a.partition)),
            Ok(Polled::Revoked(r)) => {
                for p in r {
                    self.owned.remove(p);
                }
            }
            _ => {}
        }
    }

    fn inner(&self) -> Arc<Inner> {
        self.inner.clone().expect("consumer used after drop")
    }
}

/// The transactional id of a grouped consumer's producer: stable per `--instance-id` (so a restarted
/// process fences its predecessor's open transaction at once), else unique to this process.
fn transactional_id(config: &ConsumerConfig, pid: u32, seq: u64) -> String {
    match &config.instance_id {
        Some(instance) => instance.clone(),
        None => format!("{}-{pid}-{seq}", config.group.as_deref().unwrap_or("reader")),
    }
}

/// A transactional producer, initialized: `init_transactions` fences any earlier producer with the
/// same id and aborts its open transaction.
fn create_transactional(log: &KafkaConfig, txid: &str) -> Result<ThreadedProducer<Quiet>, KafkaError> {
    let mut pc = base_client_config(log);
    pc.set("transactional.id", txid)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        // Back-to-back transactions can meet CONCURRENT_TRANSACTIONS while the previous commit's
        // markers are written (a few ms): retry after 5 ms rather than the default 100 ms.
        .set("retry.backoff.ms", "5")
        .set("retry.backoff.max.ms", "100")
        // An open transaction of a killed process that is not restarted (its partitions moved to
        // another member) blocks read_committed readers until it times out.
        .set("transaction.timeout.ms", TRANSACTION_TIMEOUT.as_millis().to_string());
    // Threaded: delivery reports are served in the background, so an abort can always flush.
    let p: ThreadedProducer<Quiet> = pc.create_with_context(Quiet::new(&log.brokers))?;
    p.init_transactions(CALL_TIMEOUT)?;
    Ok(p)
}

/// A grouped consumer's transactional producer, replaced when it hits a fatal error.
struct Txn {
    /// Shared with the thread a transactional call runs on (see [`bounded`]).
    producer: Arc<ThreadedProducer<Quiet>>,
    id: String,
}

/// Timeout handed to each transactional call.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a whole commit (or one abort) may take before its producer counts as stuck.
const WEDGED_AFTER: Duration = Duration::from_secs(15);

/// Runs `f` on the producer on a thread of its own and waits at most `limit`; `None` when it did not
/// return by then, and the producer is to be left behind.
///
/// Why by hand: librdkafka's `send_offsets_to_transaction` does not honour its timeout and can wait
/// for ever when the group coordinator's broker goes away (librdkafka issues #5456 and #5511, open
/// in the bundled 2.12): in a rolling restart of a 3-broker cluster an aggregator, the publisher or
/// a cluster stage stopped with no error at all while its coordinator's broker restarted. No crate
/// bounds a blocking FFI call; a thread and a channel do.
fn bounded<T: Send + 'static>(
    producer: &Arc<ThreadedProducer<Quiet>>,
    limit: Duration,
    f: impl FnOnce(&ThreadedProducer<Quiet>) -> T + Send + 'static,
) -> Option<T> {
    let p = producer.clone();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new().name("kafka-txn".into()).spawn(move || {
        let _ = tx.send(f(&p));
    });
    if spawned.is_err() {
        return None;
    }
    rx.recv_timeout(limit).ok()
}

/// What [`Inner::replace_producer`] says of a call [`bounded`] gave up on.
fn wedged(doing: &str) -> String {
    format!(
        "{doing} did not return within {WEDGED_AFTER:?} (librdkafka can wait for ever on a coordinator that moved, issues #5456 and #5511)"
    )
}

/// One transaction: the outputs, the consumer offsets with their checkpoints, commit.
fn transact(
    producer: &ThreadedProducer<Quiet>,
    outputs: &[Output],
    positions: &[Position],
    cgm: &rdkafka::consumer::ConsumerGroupMetadata,
    namespace: &str,
    topic: &str,
) -> Result<(), KafkaError> {
    producer.begin_transaction()?;
    for o in outputs {
        let out_topic = namespaced(namespace, &o.topic);
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&out_topic).payload(&o.payload[..]);
        if let Some(k) = &o.key {
            rec = rec.key(&k[..]);
        }
        if let Some(p) = o.partition {
            rec = rec.partition(p as i32);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    producer.poll(Duration::from_millis(10));
                    rec = back;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
    if !positions.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for p in positions {
            tpl.add_partition_offset(topic, p.partition as i32, Offset::Offset(p.offset as i64))?;
            if let Some(c) = &p.checkpoint {
                if let Some(mut e) = tpl.find_partition(topic, p.partition as i32) {
                    e.set_metadata(c);
                }
            }
        }
        producer.send_offsets_to_transaction(&tpl, cgm, TXN_CALL_TIMEOUT)?;
    }
    // rdkafka's commit_transaction flushes first, and that flush waits for delivery reports in
    // 100 ms slices, which the threaded producer's own thread serves: every commit (so every hop
    // of a window) paid 100 ms. Wait for the deliveries here, in small steps, instead.
    let deadline = Instant::now() + TXN_CALL_TIMEOUT;
    while producer.in_flight_count() > 0 {
        if Instant::now() > deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        std::thread::sleep(Duration::from_micros(250));
    }
    // A commit that timed out goes on in the background and must be resumed by calling commit
    // again, not aborted: an abort then only gets "Conflicting commit_transaction API call is
    // already in progress", for ever (seen when a broker was killed in kafka_cluster). Bounded, so
    // that a thread [`bounded`] gave up on does not go on.
    let started = Instant::now();
    loop {
        match producer.commit_transaction(TXN_CALL_TIMEOUT) {
            Err(KafkaError::Transaction(t)) if t.is_retriable() && !t.txn_requires_abort() && started.elapsed() < WEDGED_AFTER => {
                tracing::info!(error = %t, "kafka: the commit has not finished yet; resuming it");
            }
            done => return done,
        }
    }
}

/// `transaction.timeout.ms`: the coordinator aborts a transaction open longer than this on its own.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

fn is_fatal(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}

fn tx_error(e: &KafkaError, what: &str) -> LogError {
    if let KafkaError::Transaction(t) = e {
        let fenced_code =
            matches!(t.code(), RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch);
        if fenced_code || t.is_fatal() {
            return LogError::Fenced(format!("{what}: {t}"));
        }
    }
    other(what, e)
}

impl Inner {
    fn poll(&self, max_wait: Duration) -> Result<Polled, LogError> {
        let ctx = self.consumer.context();
        if let Some(e) = ctx.pop() {
            return e;
        }
        {
            let mut stashed = self.stashed.lock().expect("stash lock poisoned");
            if !stashed.is_empty() {
                return Ok(Polled::Records(std::mem::take(&mut *stashed)));
            }
        }
        let deadline = Instant::now() + max_wait;
        let mut records = Vec::new();
        loop {
            let wait = if records.is_empty() { deadline.saturating_duration_since(Instant::now()) } else { Duration::ZERO };
            let Some(polled) = self.consumer.poll(wait) else { break };
            match polled {
                Ok(m) => {
                    let r = Record {
                        partition: m.partition() as u32,
                        offset: m.offset() as u64,
                        key: m.key().map(Bytes::copy_from_slice),
                        payload: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
                    };
                    // Where librdkafka goes on from, whether this record is handed out now or stashed.
                    ctx.next.lock().expect("kafka positions lock poisoned").insert(r.partition, r.offset + 1);
                    if ctx.pending() {
                        // This record came after a rebalance in the same poll: events first.
                        self.stashed.lock().expect("stash lock poisoned").push(r);
                        break;
                    }
                    records.push(r);
                    if records.len() >= MAX_POLL_RECORDS {
                        break;
                    }
                }
                Err(e) => {
                    if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)) {
                        return Err(self.fatal().unwrap_or_else(|| other("consumer", e)));
                    }
                    ctx.quiet.report(&format!("reading `{}`: {e}", ctx.topic));
                    if records.is_empty() && !ctx.pending() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())));
                        continue;
                    }
                    break;
                }
            }
            if ctx.pending() {
                break;
            }
        }
        if !records.is_empty() {
            self.progress.lock().expect("progress lock poisoned").0 = Instant::now();
            return Ok(Polled::Records(records));
        }
        if let Some(e) = ctx.pop() {
            return e;
        }
        {
            let mut stashed = self.stashed.lock().expect("stash lock poisoned");
            if !stashed.is_empty() {
                return Ok(Polled::Records(std::mem::take(&mut *stashed)));
            }
        }
        self.unstall();
        Ok(Polled::Idle)
    }

    fn commit(&self, outputs: &[Output], positions: &[Position]) -> Result<(), LogError> {
        let Some(txn) = &self.producer else {
            return Err(LogError::Other("kafka: commit needs a consumer group (this reader has none)".into()));
        };
        let mut txn = txn.lock().expect("kafka producer lock poisoned");
        let ctx = self.consumer.context();
        if ctx.pending() {
            // The rebalance callback already gave partitions away (and librdkafka may have rejoined
            // the group under a new generation): committing now would write partials and offsets
            // for partitions another member owns. Commit nothing; the stage gets `Revoked` next and
            // every partition resumes from its last commit.
            tracing::info!(topic = %ctx.topic, "commit skipped: a rebalance is under way; resuming from the last commit");
            return Ok(());
        }
        if let Some(e) = self.fatal() {
            return Err(e);
        }
        let cgm = self
            .consumer
            .group_metadata()
            .ok_or_else(|| LogError::Other("kafka: this consumer has no group metadata to commit with".into()))?;
        let begun = Instant::now();
        let job = {
            let (outputs, positions, namespace, topic) = (outputs.to_vec(), positions.to_vec(), self.namespace.clone(), ctx.topic.clone());
            move |p: &ThreadedProducer<Quiet>| transact(p, &outputs, &positions, &cgm, &namespace, &topic)
        };
        let e = match bounded(&txn.producer, WEDGED_AFTER, job) {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => e,
            None => return self.replace_producer(&mut txn, &wedged("committing a transaction")),
        };
        if matches!(&e, KafkaError::Transaction(t) if t.code() == RDKafkaErrorCode::FencedInstanceId) {
            // The group refused this member's offsets: its member id is stale. A live twin that took
            // the id also gets this consumer fenced by its next heartbeat (then it stops); otherwise
            // librdkafka lost track after a session timeout and kept the old id, so every retry is
            // refused the same way (seen in kafka_outage): the consumer must join again.
            let _ = bounded(&txn.producer, WEDGED_AFTER, |p| p.abort_transaction(TXN_CALL_TIMEOUT));
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.consumer.client().fatal_error().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if self.consumer.client().fatal_error().is_none() {
                self.stale_member.store(true, std::sync::atomic::Ordering::Release);
            }
            return Err(self.fatal().unwrap_or_else(|| LogError::Fenced(format!("the group refused this member's offsets ({e})"))));
        }
        if is_fatal(&e) {
            return self.renew(&mut txn, &e, begun);
        }
        // Anything else (a rebalance underway, the broker away): abort, which retries until the
        // broker answers, then resume from what is committed. Nothing of this attempt is visible.
        tracing::warn!(error = %e, "kafka: commit failed; aborting it and rewinding to the committed positions");
        let mut fatal = None;
        let mut stuck = None;
        let aborted = with_backoff(&ctx.quiet, || match bounded(&txn.producer, WEDGED_AFTER, |p| p.abort_transaction(TXN_CALL_TIMEOUT)) {
            Some(Ok(())) => Ok(()),
            Some(Err(a)) if is_fatal(&a) => {
                let why = a.to_string();
                fatal = Some(a);
                Err(Retry::GiveUp(LogError::Other(why)))
            }
            // The commit itself still runs in librdkafka (it timed out, and a resumed commit did
            // not finish either): no abort can start; do what a wedged call gets.
            Some(Err(KafkaError::Transaction(a)))
                if matches!(a.code(), RDKafkaErrorCode::Conflict | RDKafkaErrorCode::PreviousInProgress) =>
            {
                stuck = Some(format!("the abort cannot start while the timed-out commit still runs ({a})"));
                Err(Retry::GiveUp(LogError::Other(a.to_string())))
            }
            Some(Err(a)) => Err(Retry::Again(format!("aborting a transaction: {a}"))),
            None => {
                stuck = Some(wedged("aborting a transaction"));
                Err(Retry::GiveUp(LogError::Other("the abort did not return".into())))
            }
        });
        match (aborted, fatal, stuck) {
            (_, Some(a), _) => self.renew(&mut txn, &a, begun),
            (_, None, Some(why)) => self.replace_producer(&mut txn, &why),
            (Ok(()), None, None) => self.rewind(),
            (Err(e), None, None) => Err(e),
        }
    }

    /// After a transactional call that cannot go on (it did not return within [`WEDGED_AFTER`], or
    /// librdkafka still runs a commit no abort can interrupt): a new producer under the same
    /// transactional id (its `init_transactions` fences the stuck one and completes or aborts
    /// whatever it had open), then back to the committed positions. Exact either way: the
    /// coordinator commits outputs and offsets together or neither, and the rewind reads the
    /// offsets it settled on.
    fn replace_producer(&self, txn: &mut Txn, why: &str) -> Result<(), LogError> {
        tracing::warn!(
            transactional_id = %txn.id,
            "kafka: {why}; leaving that producer behind, starting a new one with the same id and resuming from the last commit"
        );
        self.fresh_producer(txn)?;
        self.rewind()
    }

    /// Replaces `txn`'s producer with a new one under the same id, retrying while the broker is away.
    fn fresh_producer(&self, txn: &mut Txn) -> Result<(), LogError> {
        let quiet = &self.consumer.context().quiet;
        let id = txn.id.clone();
        let p = with_backoff(quiet, || {
            create_transactional(&self.log, &id).map_err(|e| Retry::Again(format!("re-initializing transactional id `{id}`: {e}")))
        })?;
        txn.producer = Arc::new(p);
        Ok(())
    }

    /// A consumer that has brought nothing for [`STALL_AFTER`] although its partitions hold records
    /// past its position: says so, and seeks each such partition to where it is, which restarts
    /// its fetch.
    ///
    /// Why: in a rolling restart of a 3-broker cluster the publisher once read nothing for over a
    /// minute after the leader of `emoji_partials` moved, with every aggregator still committing
    /// partials behind it and no error reported (librdkafka has had such fetcher stalls after a
    /// leader change, e.g. issues #2625 and #5153). A read_committed reader also waits here when a
    /// transaction stays open; the warning then repeats, naming the partition and offsets.
    fn unstall(&self) {
        {
            let mut progress = self.progress.lock().expect("progress lock poisoned");
            let (last_records, last_check) = *progress;
            if last_records.elapsed() < STALL_AFTER || last_check.elapsed() < STALL_AFTER {
                return;
            }
            progress.1 = Instant::now();
        }
        let ctx = self.consumer.context();
        let next = ctx.next.lock().expect("kafka positions lock poisoned").clone();
        let mut stalled = TopicPartitionList::new();
        let mut seen = Vec::new();
        for (&partition, &pos) in &next {
            let (partition, pos) = (partition as i32, pos as i64);
            let Ok((_, high)) = self.consumer.fetch_watermarks(&ctx.topic, partition, Duration::from_secs(5)) else { continue };
            // Transaction markers take offsets too: a caught-up reader may sit a marker or two short.
            if high > pos + 2 && stalled.add_partition_offset(&ctx.topic, partition, Offset::Offset(pos)).is_ok() {
                seen.push(format!("{}[{partition}] at {pos} of {high}", ctx.topic));
            }
        }
        if seen.is_empty() {
            return;
        }
        tracing::warn!(
            partitions = %seen.join(", "),
            "kafka: nothing read for {STALL_AFTER:?} although the log holds more; restarting the fetch (if this repeats, a \
             transaction left open is holding read_committed readers back)"
        );
        if let Err(e) = self.consumer.seek_partitions(stalled, Duration::from_secs(5)) {
            ctx.quiet.report(&format!("restarting the fetch of `{}`: {e}", ctx.topic));
        }
    }

    /// Fenced on its static instance id: the fatal error is FENCED_INSTANCE_ID, or the group
    /// refused this member's offsets while the consumer stayed healthy (see [`Inner::commit`]).
    fn fenced(&self) -> bool {
        self.stale_member.load(std::sync::atomic::Ordering::Acquire)
            || matches!(self.consumer.client().fatal_error(), Some((RDKafkaErrorCode::FencedInstanceId, _)))
    }

    /// Whether librdkafka said this member's session timed out after `t`.
    fn session_lost_since(&self, t: Instant) -> bool {
        self.consumer.context().session_lost.lock().expect("kafka session lock poisoned").is_some_and(|lost| lost > t)
    }

    /// A fatal consumer error (librdkafka stops the consumer): another live member with this static
    /// instance id fenced it.
    fn fatal(&self) -> Option<LogError> {
        let (code, why) = self.consumer.client().fatal_error()?;
        Some(match code {
            RDKafkaErrorCode::FencedInstanceId => LogError::Fenced(format!(
                "another process joined group `{}` with the same instance id ({why}); this one stops. Give each process its own --instance-id",
                self.group
            )),
            _ => LogError::Other(format!("kafka: the consumer of `{}` failed for good: {code:?}: {why}", self.consumer.context().topic)),
        })
    }

    /// After a fatal transactional error in a transaction begun at `begun`: a new producer with the
    /// same transactional id, then back to the committed positions.
    ///
    /// Why this happens without any twin: while the broker is away longer than
    /// `transaction.timeout.ms`, the coordinator, once back, aborts the open transaction and bumps
    /// the producer's epoch. librdkafka then answers the abort (or the next operation) with a fatal
    /// error (`INVALID_TXN_STATE`, `PRODUCER_FENCED`, `INVALID_PRODUCER_EPOCH`) and that producer is
    /// unusable: before this, the stage failed and took its process down. Nothing of the aborted
    /// transaction is visible, so a fresh producer (`init_transactions` takes the next epoch) and a
    /// rewind resume exactly. The coordinator only does that to a transaction open longer than the
    /// timeout; one fenced sooner was fenced by a live twin with the same id, and that is an error.
    ///
    /// `INVALID_TXN_STATE` is never a twin (a twin's epoch makes every call of ours answer
    /// `PRODUCER_FENCED` first): it says that the coordinator's state is not the one librdkafka
    /// expects. Seen when the broker leading a partition of the previous transaction was killed:
    /// its commit markers waited some 9 s for a new leader, every call of the next transaction got
    /// `CONCURRENT_TRANSACTIONS` until `send_offsets_to_transaction` gave up, and the abort of that
    /// transaction, which the coordinator had never registered, then got `INVALID_TXN_STATE`.
    fn renew(&self, txn: &mut Txn, why: &KafkaError, begun: Instant) -> Result<(), LogError> {
        if let Some(e) = self.fatal() {
            return Err(e);
        }
        let state_mismatch = matches!(why, KafkaError::Transaction(t) if t.code() == RDKafkaErrorCode::InvalidTransactionalState);
        if !state_mismatch && begun.elapsed() < TRANSACTION_TIMEOUT {
            return Err(LogError::Fenced(format!(
                "transactional id `{}`: {why}; another live process with the same instance id took over this work, and this one \
                 stops. Give each process its own --instance-id",
                txn.id
            )));
        }
        let why = format!(
            "the transaction coordinator ended the transaction on its own after {:?} (it outlived the transaction timeout while \
             a broker was away, or a broker's failover left it in another state): {why}",
            begun.elapsed()
        );
        self.replace_producer(txn, &why)
    }

    /// After an aborted commit: back to the committed positions, reported as a rebalance. Retries
    /// while the broker is away; a consumer that lost its partitions meanwhile gets them back (or
    /// not) through the group's next rebalance instead.
    fn rewind(&self) -> Result<(), LogError> {
        let ctx = self.consumer.context();
        self.stashed.lock().expect("stash lock poisoned").clear();
        let assigned = with_backoff(&ctx.quiet, || {
            let attempt = || -> Result<Vec<Assignment>, LogError> {
                let assignment = self.consumer.assignment().map_err(|e| other("reading the assignment", e))?;
                let partitions: Vec<u32> = assignment.elements().iter().map(|e| e.partition() as u32).collect();
                if partitions.is_empty() {
                    return Ok(Vec::new());
                }
                let assigned = ctx.resolve(&self.consumer, &partitions, self.grouped)?;
                let sought = self
                    .consumer
                    .seek_partitions(offsets_list(&ctx.topic, &assigned)?, CALL_TIMEOUT)
                    .map_err(|e| other("seeking to the committed offsets", e))?;
                if let Some(bad) = sought.elements().iter().find(|e| e.error().is_err()) {
                    return Err(other("seeking to the committed offsets", format!("partition {}: {:?}", bad.partition(), bad.error())));
                }
                ctx.note_next(&assigned);
                Ok(assigned)
            };
            attempt().map_err(|e| Retry::Again(format!("rewinding `{}`: {e}", ctx.topic)))
        })?;
        if !assigned.is_empty() {
            ctx.push(Ok(Polled::Revoked(assigned.iter().map(|a| a.partition).collect())));
            ctx.push(Ok(Polled::Assigned(assigned)));
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    /// Cancellation-safe: when the caller stops waiting, the poll keeps running and its result is
    /// what the next call returns.
    async fn poll(&mut self, max_wait: Duration) -> Result<Polled, LogError> {
        let r = match self.ready.take() {
            Some(r) => r,
            None => {
                if self.inflight.is_none() {
                    let inner = self.inner();
                    self.inflight = Some(tokio::task::spawn_blocking(move || inner.poll(max_wait)));
                }
                let handle = self.inflight.as_mut().expect("a poll is in flight");
                let result = handle.await;
                self.inflight = None;
                result.map_err(|e| other("poll", e))?
            }
        };
        // A fatal fence is reported by one event, which another call (a commit, librdkafka's own
        // queue) may have taken: a poll of a dead consumer then brings nothing, for ever, without an
        // error (seen: a publisher that never published again after its coordinator's broker was
        // killed). So the consumer's state is looked at after every poll; whatever this poll brought
        // is read again from the last commit after the rejoin.
        let r = match r {
            Ok(_) if self.inner().fenced() => {
                let inner = self.inner();
                Err(inner.fatal().unwrap_or_else(|| LogError::Fenced("the group refused this member's offsets".into())))
            }
            r => r,
        };
        if let Err(e) = &r {
            match self.rejoin_or_stop(e) {
                Rejoin::No => {}
                Rejoin::Yes => return self.rebuild().await,
                Rejoin::Twin(e) => return Err(e),
            }
        }
        self.track(&r);
        r
    }

    async fn commit(&mut self, outputs: Vec<Output>, positions: Vec<Position>) -> Result<(), LogError> {
        // A poll abandoned by its caller may have taken a rebalance's event: see it first.
        if let Some(handle) = self.inflight.take() {
            self.ready = Some(handle.await.map_err(|e| other("poll", e)).and_then(|r| r));
        }
        if matches!(self.ready, Some(Ok(Polled::Assigned(_) | Polled::Revoked(_)))) {
            tracing::info!("commit skipped: a rebalance is under way; resuming from the last commit");
            return Ok(());
        }
        let inner = self.inner();
        let r = tokio::task::spawn_blocking(move || inner.commit(&outputs, &positions)).await.map_err(|e| other("commit", e))?;
        if let Err(e) = &r {
            match self.rejoin_or_stop(e) {
                Rejoin::No => {}
                Rejoin::Yes => {
                    // Nothing of this commit is visible; the stage resumes from the last one, as after a rebalance.
                    self.ready = Some(self.rebuild().await);
                    return Ok(());
                }
                Rejoin::Twin(e) => return Err(e),
            }
        }
        r
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Leaving the group blocks until the broker agrees; do it off the async threads.
        if let Some(inner) = self.inner.take() {
            let _ = std::thread::Builder::new().name("kafka-close".into()).spawn(move || drop(inner));
        }
    }
}
