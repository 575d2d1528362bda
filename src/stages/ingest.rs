//! Ingest: stamps accepted events with the receive time and batches them onto `emoji_topic`.
//!
//! The request path ([`IngestHandle::submit`]) never takes a lock shared by all connections: it
//! reserves room with one atomic add on the bounded buffer, then in fast mode adds its counts to one
//! of several sharded accumulators (the shard of its worker thread, so the lock is practically never
//! contended and no task is woken per request); in durable mode it sends on a lock-free channel and
//! waits for its ack. One batcher task takes both, counts equal (millisecond, emoji) pairs together
//! and appends a record every `linger` or every `batch` events, whichever comes first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::core::emoji::{EmojiId, EmojiSet};
use crate::core::record::EventBatchWriter;
use crate::log::{Log, LogError, Output, topics};
use crate::telemetry;

/// When a client gets its 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// Once the event is in the bounded in-memory buffer (like the originals).
    #[default]
    Fast,
    /// Once the log has the event (Kafka: acks=all, idempotent producer).
    Durable,
}

/// Batching settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub linger: Duration,
    pub batch: u64,
    /// Most events acknowledged but not yet in the log; beyond it, 503.
    pub buffer: u64,
    pub ack: AckMode,
    /// Partitions of `emoji_topic` records are spread over.
    pub partitions: u32,
}

/// Why an event was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("ingest buffer is full ({0} events waiting for the log); retry shortly")]
    Busy(u64),
    #[error("the log did not take the events: {0}")]
    Log(String),
    #[error("ingest is shutting down")]
    ShuttingDown,
}

/// Emojis of one request, all received at the same millisecond.
#[derive(Debug)]
pub enum Items {
    One(EmojiId),
    Many(Vec<(EmojiId, u32)>),
}

impl Items {
    fn events(&self) -> u64 {
        match self {
            Items::One(_) => 1,
            Items::Many(v) => v.iter().map(|(_, n)| u64::from(*n)).sum(),
        }
    }
}

struct Submission {
    ts_ms: i64,
    items: Items,
    events: u64,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Fast-mode accumulators, one per shard, drained by the batcher.
struct Shards {
    shards: Box<[Shard]>,
    /// Events added since the batcher last drained.
    unflushed: AtomicU64,
    batch: u64,
    /// Wakes the batcher when `unflushed` reaches `batch`.
    full: Notify,
    /// Set by the batcher before its final drain: later submissions are refused, never lost.
    closed: AtomicBool,
}

/// Padded to its own cache lines so shards on different cores do not share one.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    /// `std::sync::Mutex`: held for a few map updates, never across an await; each worker thread
    /// has its own shard, so it is contended only when the batcher drains it.
    counts: Mutex<HashMap<(i64, EmojiId), u32>>,
}

thread_local! {
    /// This thread's shard (assigned round-robin the first time it submits).
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

impl Shards {
    fn new(batch: u64) -> Self {
        let n = std::thread::available_parallelism().map_or(4, |n| n.get()) * 2;
        Self {
            shards: (0..n.max(2)).map(|_| Shard::default()).collect(),
            unflushed: AtomicU64::new(0),
            batch,
            full: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Adds counts; false when the batcher has closed (nothing was added).
    fn add(&self, ts_ms: i64, items: &Items, events: u64) -> bool {
        let shard = &self.shards[SHARD.with(|s| *s) % self.shards.len()];
        {
            let mut counts = shard.counts.lock().expect("ingest shard poisoned");
            // Checked under the lock: the batcher sets `closed` before its last drain of this shard.
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            match items {
                Items::One(e) => *counts.entry((ts_ms, *e)).or_default() += 1,
                Items::Many(v) => {
                    for (e, n) in v {
                        *counts.entry((ts_ms, *e)).or_default() += n;
                    }
                }
            }
        }
        let before = self.unflushed.fetch_add(events, Ordering::AcqRel);
        if before < self.batch && before + events >= self.batch {
            self.full.notify_one();
        }
        true
    }

    /// Moves every shard's counts into `p`.
    fn drain_into(&self, p: &mut Pending) {
        for shard in self.shards.iter() {
            let taken = std::mem::take(&mut *shard.counts.lock().expect("ingest shard poisoned"));
            let mut events = 0u64;
            for (k, n) in taken {
                events += u64::from(n);
                *p.counts.entry(k).or_default() += n;
            }
            p.events += events;
            self.unflushed.fetch_sub(events, Ordering::AcqRel);
        }
    }
}

/// The request path's side of ingest. Cheap to clone.
#[derive(Clone)]
pub struct IngestHandle {
    tx: mpsc::UnboundedSender<Submission>,
    shards: Arc<Shards>,
    queued: Arc<AtomicU64>,
    capacity: u64,
    ack: AckMode,
    busy: Counter,
}

impl IngestHandle {
    /// Buffers the events; in durable mode waits until the log has them.
    ///
    /// # Errors
    /// [`SubmitError::Busy`] when the buffer is full (nothing was taken).
    pub async fn submit(&self, ts_ms: i64, items: Items) -> Result<(), SubmitError> {
        let events = items.events();
        if events == 0 {
            return Ok(());
        }
        let before = self.queued.fetch_add(events, Ordering::AcqRel);
        if before + events > self.capacity {
            self.queued.fetch_sub(events, Ordering::AcqRel);
            self.busy.increment(events);
            return Err(SubmitError::Busy(before));
        }
        if self.ack == AckMode::Fast {
            if !self.shards.add(ts_ms, &items, events) {
                self.queued.fetch_sub(events, Ordering::AcqRel);
                return Err(SubmitError::ShuttingDown);
            }
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        if self.tx.send(Submission { ts_ms, items, events, done: Some(done) }).is_err() {
            self.queued.fetch_sub(events, Ordering::AcqRel);
            return Err(SubmitError::ShuttingDown);
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SubmitError::Log(e)),
            Err(_) => Err(SubmitError::ShuttingDown),
        }
    }

    /// Events acknowledged (fast mode) but not yet appended to the log.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Acquire)
    }
}

/// The batcher task, created with its handle by [`ingest`].
pub struct Batcher {
    rx: mpsc::UnboundedReceiver<Submission>,
    shards: Arc<Shards>,
    queued: Arc<AtomicU64>,
    log: Arc<dyn Log>,
    set: EmojiSet,
    config: IngestConfig,
    depth: Gauge,
    append_errors: Counter,
}

/// Creates the request-path handle and the batcher that must be run for it to make progress.
pub fn ingest(log: Arc<dyn Log>, set: EmojiSet, config: IngestConfig) -> (IngestHandle, Batcher) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicU64::new(0));
    let shards = Arc::new(Shards::new(config.batch));
    let handle = IngestHandle {
        tx,
        shards: shards.clone(),
        queued: queued.clone(),
        capacity: config.buffer,
        ack: config.ack,
        busy: metrics::counter!(telemetry::REQUESTS_REFUSED_BUSY),
    };
    let batcher = Batcher {
        rx,
        shards,
        queued,
        log,
        set,
        config,
        depth: metrics::gauge!(telemetry::INGEST_QUEUE_DEPTH),
        append_errors: metrics::counter!(telemetry::LOG_APPEND_ERRORS),
    };
    (handle, batcher)
}

/// Events gathered since the last append.
#[derive(Default)]
struct Pending {
    counts: HashMap<(i64, EmojiId), u32>,
    events: u64,
    acks: Vec<oneshot::Sender<Result<(), String>>>,
}

impl Batcher {
    /// Runs until every [`IngestHandle`] is dropped or `shutdown` fires, then appends what it holds.
    ///
    /// # Errors
    /// Never for log failures in fast mode (it retries: acked events are not dropped); returns when
    /// the log is closed.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), LogError> {
        let mut pending = Pending::default();
        let mut next_partition = 0u32;
        let mut tick = tokio::time::interval(self.config.linger.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                msg = self.rx.recv() => match msg {
                    Some(s) => {
                        add(&mut pending, s);
                        if pending.events >= self.config.batch {
                            self.flush(&mut pending, &mut next_partition).await?;
                        }
                    }
                    None => break,
                },
                () = self.shards.full.notified() => {
                    self.shards.drain_into(&mut pending);
                    if pending.events > 0 {
                        self.flush(&mut pending, &mut next_partition).await?;
                    }
                }
                _ = tick.tick() => {
                    self.shards.drain_into(&mut pending);
                    if pending.events > 0 {
                        self.flush(&mut pending, &mut next_partition).await?;
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        // Stop taking submissions, then append everything already acknowledged.
        self.shards.closed.store(true, Ordering::Release);
        self.shards.drain_into(&mut pending);
        self.rx.close();
        while let Some(s) = self.rx.recv().await {
            add(&mut pending, s);
        }
        if pending.events > 0 {
            self.flush(&mut pending, &mut next_partition).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, pending: &mut Pending, next_partition: &mut u32) -> Result<(), LogError> {
        let taken = std::mem::take(pending);
        let mut entries: Vec<_> = taken.counts.into_iter().collect();
        entries.sort_unstable_by_key(|((ts, e), _)| (*ts, *e));
        let mut w = EventBatchWriter::new();
        for ((ts, emoji), n) in entries {
            w.push(ts, self.set.display(emoji), n);
        }
        let partition = *next_partition % self.config.partitions.max(1);
        *next_partition = next_partition.wrapping_add(1);
        let record = Output::new(topics::EVENTS, w.finish()).to_partition(partition);
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.log.append(vec![record.clone()]).await {
                Ok(()) => break,
                Err(LogError::Closed) => return Err(LogError::Closed),
                Err(e) if !taken.acks.is_empty() => {
                    // Durable: nobody has a 200 yet, so refuse them rather than hold them.
                    self.append_errors.increment(1);
                    tracing::warn!(error = %e, events = taken.events, "append to the log failed; durable requests answered 503");
                    for a in taken.acks {
                        let _ = a.send(Err(e.to_string()));
                    }
                    self.release(taken.events);
                    return Ok(());
                }
                Err(e) => {
                    // Fast: these events were acknowledged, so keep them and retry.
                    self.append_errors.increment(1);
                    tracing::warn!(error = %e, events = taken.events, retry_in = ?backoff, "append to the log failed; retrying (acked events are kept)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        for a in taken.acks {
            let _ = a.send(Ok(()));
        }
        self.release(taken.events);
        Ok(())
    }

    fn release(&self, events: u64) {
        let left = self.queued.fetch_sub(events, Ordering::AcqRel) - events;
        self.depth.set(left as f64);
    }
}

fn add(p: &mut Pending, s: Submission) {
    match s.items {
        Items::One(e) => *p.counts.entry((s.ts_ms, e)).or_default() += 1,
        Items::Many(v) => {
            for (e, n) in v {
                *p.counts.entry((s.ts_ms, e)).or_default() += n;
            }
        }
    }
    p.events += s.events;
    if let Some(d) = s.done {
        p.acks.push(d);
    }
}
