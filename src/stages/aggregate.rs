//! Aggregate: counts `emoji_topic` per partition into tumbling windows and emits one partial per
//! (partition, window), empty ones included, to `emoji_partials`.
//!
//! Exactly-once across restarts and rebalances rests on what is committed with each partial:
//! - the checkpoint `{closed_through, read_pos}`: the last window closed and the read position then;
//! - the consumer offset: the first record that still has counts in an open window.
//!
//! A new owner of the partition resumes at that offset; a record before `read_pos` whose window is at
//! or before `closed_through` was already counted in an emitted partial and is skipped, every other
//! record is counted. Which window a record lands in depends only on its timestamp and on what was
//! closed when it was read, so the replay puts each record where the first run did, or in an open
//! window when the first run never emitted it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::core::record::{PartialRecord, decode_event_batch};
use crate::core::window::{WindowAggregator, WindowSpec};
use crate::log::{Assignment, ConsumerConfig, Log, LogError, Output, Polled, Position, Record, StartAt, topics};
use crate::telemetry;

use super::now_ms;

/// Consumer group of every aggregator.
pub const GROUP: &str = "emostream-aggregate";

#[derive(Debug, Clone)]
pub struct AggregateConfig {
    pub window: WindowSpec,
    /// How long after a window's end it stays open for events still on their way.
    pub grace: Duration,
    /// Kafka: transactional id of this aggregator instance (unique per process).
    pub instance_id: Option<String>,
}

/// What is committed with each partition's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Start of the last window emitted for this partition.
    pub closed_through: i64,
    /// Read position when it was emitted.
    pub read_pos: u64,
}

struct PartitionState {
    agg: WindowAggregator,
    /// Next offset to read.
    read_pos: u64,
    /// Smallest offset contributing to each open window.
    min_offset: BTreeMap<i64, u64>,
    /// Replay boundary from the checkpoint this partition resumed at.
    replay: Option<Checkpoint>,
    /// No partial was ever emitted for this partition.
    first: bool,
}

impl PartitionState {
    fn new(a: &Assignment, spec: WindowSpec, now: i64) -> Self {
        let checkpoint = a.checkpoint.as_deref().and_then(|c| serde_json::from_str::<Checkpoint>(c).ok());
        match checkpoint {
            Some(c) => Self {
                agg: WindowAggregator::resume_after(spec, c.closed_through),
                read_pos: a.offset,
                min_offset: BTreeMap::new(),
                replay: Some(c),
                first: false,
            },
            None => {
                Self { agg: WindowAggregator::new(spec, now), read_pos: a.offset, min_offset: BTreeMap::new(), replay: None, first: true }
            }
        }
    }

    /// Counts one record; returns how many of its events were late.
    fn record(&mut self, r: &Record) -> u64 {
        let entries = match decode_event_batch(&r.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(partition = r.partition, offset = r.offset, error = %e, "skipping a record that is not an event batch");
                self.read_pos = r.offset + 1;
                return 0;
            }
        };
        let spec = self.agg.spec();
        let mut late = 0;
        for e in entries {
            let own = spec.start_of(e.ts_ms);
            if let Some(c) = self.replay {
                if r.offset < c.read_pos && own <= c.closed_through {
                    continue; // already in an emitted partial
                }
            }
            let target = own.max(self.agg.next_to_close());
            self.min_offset.entry(target).or_insert(r.offset);
            if self.agg.record(e.ts_ms, e.emoji, u64::from(e.count)) == crate::core::window::Placement::Late {
                late += u64::from(e.count);
            }
        }
        self.read_pos = r.offset + 1;
        late
    }

    /// Closes windows through the watermark (or all, on flush) and returns the partials and the
    /// position to commit.
    fn close(&mut self, partition: u32, watermark: Option<i64>, now: i64) -> Option<(Vec<Output>, Position)> {
        let closed = match watermark {
            Some(w) => self.agg.advance(w),
            None => self.agg.flush(now),
        };
        let last = closed.last()?.window_start;
        let mut outputs = Vec::with_capacity(closed.len());
        for partial in closed {
            self.min_offset.remove(&partial.window_start);
            let rec = PartialRecord { partition, first: std::mem::take(&mut self.first), partial };
            outputs.push(Output::new(topics::PARTIALS, rec.to_bytes()).with_key(partition.to_string().into()));
        }
        let checkpoint = Checkpoint { closed_through: last, read_pos: self.read_pos };
        if self.replay.is_some_and(|c| self.read_pos >= c.read_pos) {
            self.replay = None;
        }
        let offset = self.min_offset.values().copied().min().unwrap_or(self.read_pos);
        let position = Position { partition, offset, checkpoint: Some(serde_json::to_string(&checkpoint).expect("checkpoint serializes")) };
        Some((outputs, position))
    }
}

/// Runs the aggregator until `shutdown`; then reads what is already in the log and emits every window
/// it holds, so nothing acked is left unpublished.
///
/// # Errors
/// When the log fails in a way retrying cannot fix (e.g. this instance was fenced).
pub async fn run(log: Arc<dyn Log>, config: AggregateConfig, shutdown: CancellationToken) -> Result<(), LogError> {
    let mut consumer = log
        .consumer(ConsumerConfig {
            instance_id: config.instance_id.clone(),
            ..ConsumerConfig::new(topics::EVENTS, Some(GROUP), StartAt::Earliest)
        })
        .await?;
    let grace_ms = i64::try_from(config.grace.as_millis()).unwrap_or(i64::MAX);
    let tick_every = Duration::from_millis((config.window.size_ms() as u64 / 20).clamp(5, 100));
    let late_counter = metrics::counter!(telemetry::LATE_EVENTS);
    let partials_counter = metrics::counter!(telemetry::PARTIALS_EMITTED);
    let mut parts: HashMap<u32, PartitionState> = HashMap::new();
    let mut next_tick = tokio::time::Instant::now();
    let mut stopping = false;
    loop {
        let wait = if stopping { Duration::from_millis(50) } else { next_tick.saturating_duration_since(tokio::time::Instant::now()) };
        let polled = tokio::select! {
            p = consumer.poll(wait) => p?,
            () = shutdown.cancelled(), if !stopping => { stopping = true; continue; }
        };
        match polled {
            Polled::Records(records) => {
                for r in &records {
                    if let Some(st) = parts.get_mut(&r.partition) {
                        late_counter.increment(st.record(r));
                    }
                }
            }
            Polled::Assigned(assigned) => {
                let now = now_ms();
                for a in assigned {
                    tracing::info!(partition = a.partition, offset = a.offset, checkpoint = ?a.checkpoint, "aggregating partition");
                    parts.insert(a.partition, PartitionState::new(&a, config.window, now));
                }
            }
            Polled::Revoked(revoked) => {
                for p in revoked {
                    tracing::info!(partition = p, "partition moved to another aggregator");
                    parts.remove(&p);
                }
            }
            Polled::Idle if stopping => break,
            Polled::Idle => {}
        }
        if !stopping && tokio::time::Instant::now() >= next_tick {
            next_tick = tokio::time::Instant::now() + tick_every;
            let now = now_ms();
            commit_closed(&mut *consumer, &mut parts, Some(now - grace_ms), now, &partials_counter).await?;
        }
    }
    let now = now_ms();
    commit_closed(&mut *consumer, &mut parts, None, now, &partials_counter).await?;
    tracing::info!("aggregator flushed its open windows");
    Ok(())
}

async fn commit_closed(
    consumer: &mut dyn crate::log::Consumer,
    parts: &mut HashMap<u32, PartitionState>,
    watermark: Option<i64>,
    now: i64,
    partials_counter: &metrics::Counter,
) -> Result<(), LogError> {
    let mut outputs = Vec::new();
    let mut positions = Vec::new();
    let mut ids: Vec<u32> = parts.keys().copied().collect();
    ids.sort_unstable();
    for p in ids {
        if let Some((o, pos)) = parts.get_mut(&p).and_then(|st| st.close(p, watermark, now)) {
            outputs.extend(o);
            positions.push(pos);
        }
    }
    if outputs.is_empty() {
        return Ok(());
    }
    let n = outputs.len() as u64;
    consumer.commit(outputs, positions).await?;
    partials_counter.increment(n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::EventBatchWriter;
    use bytes::Bytes;

    fn rec(offset: u64, entries: &[(i64, &str, u32)]) -> Record {
        let mut w = EventBatchWriter::new();
        for (ts, e, n) in entries {
            w.push(*ts, e, *n);
        }
        Record { partition: 0, offset, key: None, payload: w.finish() }
    }

    fn total(outputs: &[Output]) -> u64 {
        outputs.iter().map(|o| PartialRecord::from_bytes(&o.payload).unwrap().partial.total()).sum()
    }

    /// The scenario the checkpoint exists for: a crash after closing a window while a later window
    /// holds counts from records read before the close. Replaying from the committed offset must
    /// count each event exactly once.
    #[test]
    fn replay_after_a_crash_counts_each_event_once() {
        let spec = WindowSpec::new(1000);
        let log: Vec<Record> = vec![
            rec(0, &[(100, "😀", 1)]),
            rec(1, &[(1100, "😀", 2)]), // next window, read before window 0 closes
            rec(2, &[(900, "😂", 4)]),  // still window 0
            rec(3, &[(1200, "😂", 8)]),
        ];
        let a0 = Assignment { partition: 0, offset: 0, checkpoint: None };
        let mut first = PartitionState::new(&a0, spec, 0);
        for r in &log[..3] {
            first.record(r);
        }
        let (out0, pos) = first.close(0, Some(1000), 1000).unwrap();
        assert_eq!(total(&out0), 5);
        assert_eq!(pos.offset, 1, "record 1 still has counts in an open window");
        // Crash: record 3 was never seen by the first instance and window 1 never emitted.
        let resumed = Assignment { partition: 0, offset: pos.offset, checkpoint: pos.checkpoint };
        let mut second = PartitionState::new(&resumed, spec, 5000);
        for r in &log[1..] {
            second.record(r);
        }
        let (out1, _) = second.close(0, Some(2000), 5000).unwrap();
        assert_eq!(total(&out0) + total(&out1), 15);
        let p = PartialRecord::from_bytes(&out1[0].payload).unwrap();
        assert_eq!(p.partial.window_start, 1000);
        assert!(!p.first);
    }

    #[test]
    fn first_partial_is_marked_and_empty_windows_emitted() {
        let spec = WindowSpec::new(1000);
        let a = Assignment { partition: 3, offset: 0, checkpoint: None };
        let mut st = PartitionState::new(&a, spec, 10_500);
        let (out, pos) = st.close(3, Some(13_000), 13_000).unwrap();
        let recs: Vec<_> = out.iter().map(|o| PartialRecord::from_bytes(&o.payload).unwrap()).collect();
        assert_eq!(recs.iter().map(|r| r.partial.window_start).collect::<Vec<_>>(), vec![10_000, 11_000, 12_000]);
        assert!(recs[0].first && !recs[1].first);
        assert_eq!(pos.offset, 0);
        assert!(st.close(3, Some(13_000), 13_000).is_none());
    }

    #[test]
    fn undecodable_record_is_skipped_not_fatal() {
        let a = Assignment { partition: 0, offset: 0, checkpoint: None };
        let mut st = PartitionState::new(&a, WindowSpec::new(1000), 0);
        st.record(&Record { partition: 0, offset: 0, key: None, payload: Bytes::from_static(b"junk") });
        assert_eq!(st.read_pos, 1);
    }
}
