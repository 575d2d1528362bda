//! The log every stage reads and writes: topics of partitions of records at offsets.
//!
//! One trait, two implementations: [`memory::MemoryLog`] (in-process, the embedded default) and
//! `kafka::KafkaLog` (Apache Kafka through rdkafka). Stage code only sees [`Log`] and [`Consumer`],
//! so the same aggregation runs in both.
//!
//! Exactly-once hinges on [`Consumer::commit`]: a stage's outputs and its input positions (with an
//! opaque checkpoint string, e.g. "closed through window W") are committed together. Kafka does it in
//! one transaction; in memory it is trivially atomic.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub mod memory;

#[cfg(feature = "kafka")]
pub mod kafka;

/// Topic names (as the original named them).
pub mod topics {
    /// Accepted events, in binary event-batch records.
    pub const EVENTS: &str = "emoji_topic";
    /// One partial per (event partition, window), JSON.
    pub const PARTIALS: &str = "emoji_partials";
    /// One swarm message per window, JSON.
    pub const MAIN: &str = "main_topic";
    /// Subscriptions, compacted, keyed by client id.
    pub const SUBSCRIPTIONS: &str = "emostream_subscriptions";

    /// Cluster `n`'s topic: `cluster1`, `cluster2`, …
    pub fn cluster(n: u32) -> String {
        format!("cluster{n}")
    }
}

/// One record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    pub key: Option<Bytes>,
    pub payload: Bytes,
}

/// A record to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub topic: String,
    /// `None`: the log chooses (by key when there is one).
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub payload: Bytes,
}

impl Output {
    pub fn new(topic: impl Into<String>, payload: Bytes) -> Self {
        Self { topic: topic.into(), partition: None, key: None, payload }
    }

    #[must_use]
    pub fn with_key(mut self, key: Bytes) -> Self {
        self.key = Some(key);
        self
    }

    #[must_use]
    pub fn to_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// Where a new consumer starts when its group has no committed position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    /// The last `n` records of each partition (a new subscriber's "latest window").
    Tail(u64),
}

/// What a consumer reads.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub topic: String,
    /// Consumers of one group share the partitions and its committed positions; `None` reads every
    /// partition and commits nothing.
    pub group: Option<String>,
    pub start: StartAt,
    /// Kafka: this consumer's stable identity across restarts (`--instance-id`): its static group
    /// membership (`group.instance.id`) and the transactional id of the producer bound to it for
    /// [`Consumer::commit`]. Unique per consumer: two live ones must not share it. `None`: a dynamic member with a per-process transactional id. Ignored in memory.
    pub instance_id: Option<String>,
}

impl ConsumerConfig {
    pub fn new(topic: impl Into<String>, group: Option<&str>, start: StartAt) -> Self {
        Self { topic: topic.into(), group: group.map(str::to_owned), start, instance_id: None }
    }
}

/// A committed position: the next offset to read, and the stage's checkpoint for that partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
    pub checkpoint: Option<String>,
}

/// A partition given to this consumer, with where reading resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub partition: u32,
    /// The next offset this consumer will read.
    pub offset: u64,
    /// The checkpoint committed with that offset, if any.
    pub checkpoint: Option<String>,
}

/// What a poll brings.
#[derive(Debug)]
pub enum Polled {
    Records(Vec<Record>),
    /// Partitions newly given to this consumer (all of them at the start in memory).
    Assigned(Vec<Assignment>),
    /// Partitions taken away (a rebalance): drop their state, another consumer resumes them.
    Revoked(Vec<u32>),
    /// Nothing within the wait.
    Idle,
}

/// What went wrong talking to the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("topic `{0}` does not exist")]
    NoSuchTopic(String),
    #[error("partition {partition} of topic `{topic}` does not exist")]
    NoSuchPartition { topic: String, partition: u32 },
    #[error("cannot reach the log at {addr}: {why} (is Kafka running? try `scripts/kafka start`)")]
    Unreachable { addr: String, why: String },
    #[error("this process was fenced: another instance with the same transactional id took over ({0})")]
    Fenced(String),
    #[error("the log is shut down")]
    Closed,
    #[error("{0}")]
    Other(String),
}

/// The log: topics with partitions of records.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Creates `topic` with `partitions` partitions unless it exists; returns its partition count.
    ///
    /// # Errors
    /// When the log cannot be reached or refuses.
    async fn ensure_topic(&self, topic: &str, partitions: u32, compacted: bool) -> Result<u32, LogError>;

    /// Number of partitions of an existing topic.
    ///
    /// # Errors
    /// [`LogError::NoSuchTopic`] or a transport error.
    async fn partitions(&self, topic: &str) -> Result<u32, LogError>;

    /// Appends records; returns once the log has them (Kafka: acknowledged per its `acks`).
    ///
    /// # Errors
    /// When the records could not be written; none of them should be counted as written then.
    async fn append(&self, outputs: Vec<Output>) -> Result<(), LogError>;

    /// A consumer of one topic.
    ///
    /// # Errors
    /// When the topic does not exist or the log cannot be reached.
    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, LogError>;

    /// A short description for logs ("in-process" or "kafka at host:port").
    fn describe(&self) -> String;

    /// Whether the log answers now (for `/readyz`); the in-process log always does.
    ///
    /// # Errors
    /// When it cannot be reached.
    async fn ping(&self) -> Result<(), LogError> {
        Ok(())
    }
}

/// Reads one topic.
#[async_trait]
pub trait Consumer: Send {
    /// Waits up to `max_wait` for something to happen.
    ///
    /// Cancellation-safe: a caller that stops waiting (a `select!` on shutdown) loses nothing; what
    /// the abandoned poll brought is what the next poll returns.
    ///
    /// # Errors
    /// When the log fails; the stage decides whether to retry.
    async fn poll(&mut self, max_wait: Duration) -> Result<Polled, LogError>;

    /// Writes `outputs` and commits `positions` for this consumer's group, all or nothing.
    ///
    /// When the log aborts a commit it can retry (Kafka: a rebalance underway), nothing of it is
    /// visible and the consumer rewinds to its committed positions: the next polls bring `Revoked`
    /// and `Assigned` for its partitions, exactly as a rebalance would. Likewise, when a rebalance
    /// has already taken partitions away but the stage has not polled `Revoked` yet, nothing is
    /// committed: the next poll brings `Revoked`.
    ///
    /// # Errors
    /// When the commit fails; then none of it happened ([`LogError::Fenced`]: stop, another instance
    /// owns this work now).
    async fn commit(&mut self, outputs: Vec<Output>, positions: Vec<Position>) -> Result<(), LogError>;
}
