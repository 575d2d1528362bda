//! Publish (the main publisher): merges the partials of a window once every event partition has
//! reported, applies the scale rule, and emits one swarm message per window to `main_topic`, in order,
//! each exactly once.
//!
//! A window waits for every partition: when an aggregator dies, its partitions' partials come from
//! the aggregator that takes them over, so a window is late rather than short. The checkpoint
//! (last window published, and each partition's first window) is committed with the output.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::core::emotion::{EmotionMap, TrendConfig, TrendState, observe};
use crate::core::record::PartialRecord;
use crate::core::scale::ScaleRule;
use crate::core::swarm::SwarmMessage;
use crate::core::window::{Partial, WindowSpec, merge};
use crate::log::{ConsumerConfig, Log, LogError, Output, Polled, Position, StartAt, topics};
use crate::telemetry;

use super::now_ms;

pub const GROUP: &str = "emostream-publish";

#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub window: WindowSpec,
    pub scale: ScaleRule,
    pub emotions: Arc<EmotionMap>,
    pub trend: TrendConfig,
    pub instance_id: Option<String>,
}

/// Committed with the consumer offsets of `emoji_partials`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub last_published: Option<i64>,
    /// First window each event partition reported (earlier windows count as empty for it).
    pub first: BTreeMap<u32, i64>,
    /// Moving averages behind `trend` and `surges`, so a restarted publisher continues them.
    #[serde(default)]
    pub trend: TrendState,
}

/// Where a partial was read: (`emoji_partials` partition, offset).
type Source = (u32, u64);

/// Merging state, pure: feed partials, take the windows that are complete.
#[derive(Debug)]
pub struct Merger {
    spec: WindowSpec,
    partitions: u32,
    /// window start → partition → (partial, (partials partition, offset) it came from)
    pending: BTreeMap<i64, HashMap<u32, (Partial, Source)>>,
    state: Checkpoint,
}

/// A window ready to publish, with the merged counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complete {
    pub window_start: i64,
    pub window_end: i64,
    pub counts: crate::core::window::Counts,
    pub late: u64,
}

impl Merger {
    pub fn new(spec: WindowSpec, partitions: u32, state: Checkpoint) -> Self {
        Self { spec, partitions, pending: BTreeMap::new(), state }
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.state
    }

    /// Takes one partial. Returns false when it was a duplicate of a published window.
    pub fn add(&mut self, rec: PartialRecord, source: (u32, u64)) -> bool {
        let w = rec.partial.window_start;
        if self.state.last_published.is_some_and(|l| w <= l) {
            return false;
        }
        if rec.first {
            self.state.first.entry(rec.partition).or_insert(w);
        }
        self.pending.entry(w).or_default().insert(rec.partition, (rec.partial, source));
        true
    }

    /// Windows complete in order, each at most once.
    pub fn take_complete(&mut self) -> Vec<Complete> {
        let mut out = Vec::new();
        loop {
            let next = match self.state.last_published {
                Some(l) => l + self.spec.size_ms(),
                None => {
                    // Start once every partition has said where it begins.
                    if (0..self.partitions).any(|p| !self.state.first.contains_key(&p)) {
                        return out;
                    }
                    let start = self.state.first.values().copied().min().expect("partitions > 0");
                    match self.pending.keys().next() {
                        Some(&k) => k.min(start),
                        None => start,
                    }
                }
            };
            let got = self.pending.get(&next);
            let ready = (0..self.partitions)
                .all(|p| got.is_some_and(|g| g.contains_key(&p)) || self.state.first.get(&p).is_some_and(|f| *f > next));
            if !ready {
                return out;
            }
            let parts = self.pending.remove(&next).unwrap_or_default();
            let (counts, late) = merge(parts.values().map(|(p, _)| p));
            out.push(Complete { window_start: next, window_end: next + self.spec.size_ms(), counts, late });
            self.state.last_published = Some(next);
        }
    }

    /// The emotion fields of a window just taken, advancing the trend kept in the checkpoint.
    pub fn mood(&mut self, map: &EmotionMap, config: &TrendConfig, counts: &crate::core::window::Counts) -> crate::core::emotion::Mood {
        observe(map, config, &mut self.state.trend, counts)
    }

    /// Where to resume reading each partials partition: the earliest partial not yet published.
    pub fn positions(&self, read_pos: &HashMap<u32, u64>) -> Vec<Position> {
        let checkpoint = serde_json::to_string(&self.state).expect("checkpoint serializes");
        read_pos
            .iter()
            .map(|(&partition, &pos)| {
                let min_pending =
                    self.pending.values().flat_map(|m| m.values()).filter(|(_, (pp, _))| *pp == partition).map(|(_, (_, o))| *o).min();
                Position { partition, offset: min_pending.unwrap_or(pos), checkpoint: Some(checkpoint.clone()) }
            })
            .collect()
    }
}

/// Runs the publisher until `shutdown`; then publishes every window already complete.
///
/// # Errors
/// When the log fails in a way retrying cannot fix.
pub async fn run(log: Arc<dyn Log>, config: PublishConfig, shutdown: CancellationToken) -> Result<(), LogError> {
    let partitions = log.partitions(topics::EVENTS).await?;
    let mut consumer = log
        .consumer(ConsumerConfig {
            instance_id: config.instance_id.clone(),
            ..ConsumerConfig::new(topics::PARTIALS, Some(GROUP), StartAt::Earliest)
        })
        .await?;
    let published = metrics::counter!(telemetry::WINDOWS_PUBLISHED);
    let delay = metrics::histogram!(telemetry::PUBLISH_DELAY);
    let mut merger: Option<Merger> = None;
    let mut read_pos: HashMap<u32, u64> = HashMap::new();
    let mut stopping = false;
    loop {
        let wait = Duration::from_millis(if stopping { 100 } else { 500 });
        let polled = tokio::select! {
            p = consumer.poll(wait) => p?,
            () = shutdown.cancelled(), if !stopping => { stopping = true; continue; }
        };
        match polled {
            Polled::Assigned(assigned) => {
                // One publisher reads every partition; the checkpoint is the same on each.
                let state = assigned
                    .iter()
                    .filter_map(|a| a.checkpoint.as_deref())
                    .filter_map(|c| serde_json::from_str::<Checkpoint>(c).ok())
                    .max_by_key(|c| c.last_published)
                    .unwrap_or_default();
                tracing::info!(last_published = ?state.last_published, partitions, "publisher resuming");
                for a in &assigned {
                    read_pos.insert(a.partition, a.offset);
                }
                merger = Some(Merger::new(config.window, partitions, state));
            }
            Polled::Revoked(_) => {
                merger = None;
                read_pos.clear();
            }
            Polled::Records(records) => {
                let Some(m) = merger.as_mut() else { continue };
                for r in records {
                    read_pos.insert(r.partition, r.offset + 1);
                    match PartialRecord::from_bytes(&r.payload) {
                        Ok(p) => {
                            if !m.add(p, (r.partition, r.offset)) {
                                tracing::debug!(offset = r.offset, "partial of an already published window ignored");
                            }
                        }
                        Err(e) => tracing::error!(offset = r.offset, error = %e, "skipping an undecodable partial"),
                    }
                }
                let complete = m.take_complete();
                if !complete.is_empty() {
                    let now = now_ms();
                    let outputs: Vec<Output> = complete
                        .into_iter()
                        .map(|c| {
                            let mood = m.mood(&config.emotions, &config.trend, &c.counts);
                            let msg = SwarmMessage::new(c.window_start, c.window_end, c.counts, c.late, config.scale, now).with_mood(mood);
                            delay.record((now - c.window_end).max(0) as f64 / 1000.0);
                            Output::new(topics::MAIN, msg.to_bytes()).to_partition(0)
                        })
                        .collect();
                    let n = outputs.len() as u64;
                    consumer.commit(outputs, m.positions(&read_pos)).await?;
                    published.increment(n);
                }
            }
            Polled::Idle if stopping => break,
            Polled::Idle => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(partition: u32, start: i64, first: bool, n: u64) -> PartialRecord {
        let counts = if n > 0 { [("😀".to_string(), n)].into_iter().collect() } else { Default::default() };
        PartialRecord { partition, first, partial: Partial { window_start: start, window_end: start + 1000, counts, late: 0 } }
    }

    #[test]
    fn waits_for_every_partition_then_publishes_in_order() {
        let mut m = Merger::new(WindowSpec::new(1000), 2, Checkpoint::default());
        m.add(partial(0, 0, true, 1), (0, 0));
        assert!(m.take_complete().is_empty(), "partition 1 has not reported");
        m.add(partial(0, 1000, false, 2), (0, 1));
        m.add(partial(1, 1000, false, 3), (0, 2));
        assert!(m.take_complete().is_empty(), "window 0 still waits for partition 1");
        m.add(partial(1, 0, true, 4), (0, 3));
        let c = m.take_complete();
        assert_eq!(c.iter().map(|c| (c.window_start, c.counts["😀"])).collect::<Vec<_>>(), vec![(0, 5), (1000, 5)]);
        assert!(!m.add(partial(0, 1000, false, 2), (0, 4)), "a published window is never merged again");
    }

    #[test]
    fn a_partition_that_started_later_counts_as_empty_before_it() {
        let mut m = Merger::new(WindowSpec::new(1000), 2, Checkpoint::default());
        m.add(partial(0, 0, true, 1), (0, 0));
        m.add(partial(0, 1000, false, 1), (0, 1));
        m.add(partial(1, 1000, true, 7), (0, 2));
        let c = m.take_complete();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].counts["😀"], 1);
        assert_eq!(c[1].counts["😀"], 8);
    }

    #[test]
    fn positions_keep_unpublished_partials() {
        let mut m = Merger::new(WindowSpec::new(1000), 2, Checkpoint::default());
        m.add(partial(0, 0, true, 1), (0, 10));
        m.add(partial(1, 0, true, 1), (0, 11));
        m.add(partial(0, 1000, false, 1), (0, 12));
        assert_eq!(m.take_complete().len(), 1);
        let pos = m.positions(&[(0, 13)].into_iter().collect());
        assert_eq!(pos[0].offset, 12);
        let cp: Checkpoint = serde_json::from_str(pos[0].checkpoint.as_ref().unwrap()).unwrap();
        assert_eq!(cp.last_published, Some(0));
        // Resume: replaying offset 12 onwards gives the same result.
        let mut r = Merger::new(WindowSpec::new(1000), 2, cp);
        r.add(partial(0, 1000, false, 1), (0, 12));
        r.add(partial(1, 1000, false, 1), (0, 13));
        assert_eq!(r.take_complete()[0].window_start, 1000);
    }
}
