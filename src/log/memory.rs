//! The in-process log: the embedded default, nothing to install.
//!
//! Each partition is a deque of records behind a `std::sync::Mutex` (never held across an await; the
//! writers are a handful of stage tasks, not client connections). Readers wait on a per-topic `watch`
//! that ticks on every append. Records every live reader has passed are trimmed, so memory stays
//! bounded however long `emostream up` runs.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::{Assignment, Consumer, ConsumerConfig, Log, LogError, Output, Polled, Position, Record, StartAt};

/// Records kept even when every reader has passed them (so a `Tail` reader finds something).
const KEEP_AT_LEAST: usize = 64;
/// Records kept while nobody reads a partition yet.
const KEEP_UNREAD: usize = 100_000;
/// Most records one poll returns.
const MAX_POLL: usize = 1024;

#[derive(Debug, Default)]
struct PartitionState {
    /// Offset of `records[0]`.
    base: u64,
    records: VecDeque<(Option<Bytes>, Bytes)>,
    /// Read positions of live consumers; trimming never passes the slowest.
    cursors: Vec<Weak<AtomicU64>>,
}

impl PartitionState {
    fn end(&self) -> u64 {
        self.base + self.records.len() as u64
    }

    fn trim(&mut self) {
        self.cursors.retain(|c| c.strong_count() > 0);
        let floor = self.cursors.iter().filter_map(Weak::upgrade).map(|c| c.load(Ordering::Acquire)).min();
        let keep_from = match floor {
            Some(f) => f.min(self.end().saturating_sub(KEEP_AT_LEAST as u64)),
            None => self.end().saturating_sub(KEEP_UNREAD as u64),
        };
        while self.base < keep_from && !self.records.is_empty() {
            self.records.pop_front();
            self.base += 1;
        }
    }
}

#[derive(Debug)]
struct Topic {
    partitions: Vec<Mutex<PartitionState>>,
    /// Ticks on every append so readers wake.
    version: watch::Sender<u64>,
    /// Round-robin for outputs without partition or key.
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Group {
    committed: HashMap<u32, (u64, Option<String>)>,
}

/// The in-process log. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct MemoryLog {
    topics: Arc<RwLock<HashMap<String, Arc<Topic>>>>,
    groups: Arc<Mutex<HashMap<(String, String), Group>>>,
}

impl MemoryLog {
    pub fn new() -> Self {
        Self::default()
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>, LogError> {
        self.topics.read().expect("memory log lock poisoned").get(name).cloned().ok_or_else(|| LogError::NoSuchTopic(name.to_string()))
    }

    fn append_sync(&self, outputs: Vec<Output>) -> Result<(), LogError> {
        let mut touched: Vec<Arc<Topic>> = Vec::new();
        for out in outputs {
            let topic = self.topic(&out.topic)?;
            let n = topic.partitions.len();
            let p = match (out.partition, &out.key) {
                (Some(p), _) => p as usize,
                (None, Some(k)) => (fnv1a(k) % n as u64) as usize,
                (None, None) => topic.next.fetch_add(1, Ordering::Relaxed) % n,
            };
            let part = topic.partitions.get(p).ok_or(LogError::NoSuchPartition { topic: out.topic.clone(), partition: p as u32 })?;
            let mut st = part.lock().expect("memory log lock poisoned");
            st.records.push_back((out.key, out.payload));
            if st.records.len() > KEEP_AT_LEAST * 2 {
                st.trim();
            }
            drop(st);
            if !touched.iter().any(|t| Arc::ptr_eq(t, &topic)) {
                touched.push(topic);
            }
        }
        for t in touched {
            t.version.send_modify(|v| *v += 1);
        }
        Ok(())
    }
}

/// Stable hash for keyed partitioning (same key, same partition).
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3))
}

#[async_trait]
impl Log for MemoryLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32, _compacted: bool) -> Result<u32, LogError> {
        let mut topics = self.topics.write().expect("memory log lock poisoned");
        let t = topics.entry(topic.to_string()).or_insert_with(|| {
            Arc::new(Topic {
                partitions: (0..partitions.max(1)).map(|_| Mutex::default()).collect(),
                version: watch::Sender::new(0),
                next: AtomicUsize::new(0),
            })
        });
        Ok(t.partitions.len() as u32)
    }

    async fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self.topic(topic)?.partitions.len() as u32)
    }

    async fn append(&self, outputs: Vec<Output>) -> Result<(), LogError> {
        self.append_sync(outputs)
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, LogError> {
        let topic = self.topic(&config.topic)?;
        let committed = config.group.as_ref().map(|g| {
            let groups = self.groups.lock().expect("memory log lock poisoned");
            groups.get(&(config.topic.clone(), g.clone())).map(|g| g.committed.clone()).unwrap_or_default()
        });
        let mut cursors = Vec::new();
        let mut assigned = Vec::new();
        for (i, part) in topic.partitions.iter().enumerate() {
            let mut st = part.lock().expect("memory log lock poisoned");
            let (offset, checkpoint) = match committed.as_ref().and_then(|c| c.get(&(i as u32))) {
                Some((o, c)) => (*o, c.clone()),
                None => match config.start {
                    StartAt::Earliest => (st.base, None),
                    StartAt::Latest => (st.end(), None),
                    StartAt::Tail(n) => (st.end().saturating_sub(n).max(st.base), None),
                },
            };
            let cursor = Arc::new(AtomicU64::new(offset));
            st.cursors.push(Arc::downgrade(&cursor));
            cursors.push(cursor);
            assigned.push(Assignment { partition: i as u32, offset, checkpoint });
        }
        Ok(Box::new(MemoryConsumer {
            log: self.clone(),
            version: topic.version.subscribe(),
            topic,
            name: config.topic,
            group: config.group,
            cursors,
            pending_assignment: Some(assigned),
            rr: 0,
        }))
    }

    fn describe(&self) -> String {
        "in-process log".to_string()
    }
}

struct MemoryConsumer {
    log: MemoryLog,
    topic: Arc<Topic>,
    name: String,
    group: Option<String>,
    version: watch::Receiver<u64>,
    /// Next offset to read, per partition.
    cursors: Vec<Arc<AtomicU64>>,
    pending_assignment: Option<Vec<Assignment>>,
    /// Partition to read first next time, so one busy partition cannot starve the others.
    rr: usize,
}

impl MemoryConsumer {
    fn take_available(&mut self) -> Vec<Record> {
        let mut out = Vec::new();
        let n = self.topic.partitions.len();
        for k in 0..n {
            let i = (self.rr + k) % n;
            let cursor = &self.cursors[i];
            let st = self.topic.partitions[i].lock().expect("memory log lock poisoned");
            let mut pos = cursor.load(Ordering::Acquire).max(st.base);
            while pos < st.end() && out.len() < MAX_POLL {
                let (key, payload) = &st.records[(pos - st.base) as usize];
                out.push(Record { partition: i as u32, offset: pos, key: key.clone(), payload: payload.clone() });
                pos += 1;
            }
            cursor.store(pos, Ordering::Release);
            if out.len() >= MAX_POLL {
                break;
            }
        }
        self.rr = (self.rr + 1) % n.max(1);
        out
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn poll(&mut self, max_wait: Duration) -> Result<Polled, LogError> {
        if let Some(a) = self.pending_assignment.take() {
            return Ok(Polled::Assigned(a));
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            self.version.borrow_and_update();
            let records = self.take_available();
            if !records.is_empty() {
                return Ok(Polled::Records(records));
            }
            match tokio::time::timeout_at(deadline, self.version.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(LogError::Closed),
                Err(_) => return Ok(Polled::Idle),
            }
        }
    }

    async fn commit(&mut self, outputs: Vec<Output>, positions: Vec<Position>) -> Result<(), LogError> {
        self.log.append_sync(outputs)?;
        if let Some(g) = &self.group {
            let mut groups = self.log.groups.lock().expect("memory log lock poisoned");
            let group = groups.entry((self.name.clone(), g.clone())).or_default();
            for p in positions {
                group.committed.insert(p.partition, (p.offset, p.checkpoint));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(t: &str, s: &'static str) -> Output {
        Output::new(t, Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test]
    async fn reads_what_was_appended_in_order() {
        let log = MemoryLog::new();
        log.ensure_topic("t", 1, false).await.unwrap();
        let mut c = log.consumer(ConsumerConfig::new("t", None, StartAt::Earliest)).await.unwrap();
        assert!(matches!(c.poll(Duration::ZERO).await.unwrap(), Polled::Assigned(a) if a.len() == 1));
        log.append(vec![out("t", "a"), out("t", "b")]).await.unwrap();
        let Polled::Records(r) = c.poll(Duration::from_secs(1)).await.unwrap() else { panic!("no records") };
        assert_eq!(
            r.iter().map(|r| (r.offset, r.payload.clone())).collect::<Vec<_>>(),
            vec![(0, Bytes::from_static(b"a")), (1, Bytes::from_static(b"b"))]
        );
        assert!(matches!(c.poll(Duration::from_millis(10)).await.unwrap(), Polled::Idle));
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_append() {
        let log = MemoryLog::new();
        log.ensure_topic("t", 2, false).await.unwrap();
        let mut c = log.consumer(ConsumerConfig::new("t", None, StartAt::Latest)).await.unwrap();
        c.poll(Duration::ZERO).await.unwrap();
        let l2 = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            l2.append(vec![out("t", "x").to_partition(1)]).await.unwrap();
        });
        let Polled::Records(r) = c.poll(Duration::from_secs(5)).await.unwrap() else { panic!("no records") };
        assert_eq!(r[0].partition, 1);
    }

    #[tokio::test]
    async fn group_resumes_from_commit_with_checkpoint() {
        let log = MemoryLog::new();
        log.ensure_topic("t", 1, false).await.unwrap();
        log.ensure_topic("o", 1, false).await.unwrap();
        log.append(vec![out("t", "a"), out("t", "b")]).await.unwrap();
        let mut c = log.consumer(ConsumerConfig::new("t", Some("g"), StartAt::Earliest)).await.unwrap();
        c.poll(Duration::ZERO).await.unwrap();
        c.commit(vec![out("o", "done")], vec![Position { partition: 0, offset: 1, checkpoint: Some("w1".into()) }]).await.unwrap();
        drop(c);
        let mut c = log.consumer(ConsumerConfig::new("t", Some("g"), StartAt::Earliest)).await.unwrap();
        let Polled::Assigned(a) = c.poll(Duration::ZERO).await.unwrap() else { panic!() };
        assert_eq!(a[0], Assignment { partition: 0, offset: 1, checkpoint: Some("w1".into()) });
        assert_eq!(log.partitions("o").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn memory_is_trimmed_behind_the_slowest_reader() {
        let log = MemoryLog::new();
        log.ensure_topic("t", 1, false).await.unwrap();
        let mut c = log.consumer(ConsumerConfig::new("t", None, StartAt::Earliest)).await.unwrap();
        c.poll(Duration::ZERO).await.unwrap();
        for _ in 0..10 {
            log.append((0..100).map(|_| out("t", "x")).collect()).await.unwrap();
            while let Polled::Records(_) = c.poll(Duration::ZERO).await.unwrap() {}
        }
        let t = log.topic("t").unwrap();
        let st = t.partitions[0].lock().unwrap();
        assert!(st.records.len() <= KEEP_AT_LEAST * 2 + 100, "kept {}", st.records.len());
        assert_eq!(st.end(), 1000);
    }

    #[tokio::test]
    async fn tail_starts_at_the_last_records() {
        let log = MemoryLog::new();
        log.ensure_topic("t", 1, false).await.unwrap();
        log.append(vec![out("t", "a"), out("t", "b"), out("t", "c")]).await.unwrap();
        let mut c = log.consumer(ConsumerConfig::new("t", None, StartAt::Tail(1))).await.unwrap();
        c.poll(Duration::ZERO).await.unwrap();
        let Polled::Records(r) = c.poll(Duration::ZERO).await.unwrap() else { panic!() };
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].payload, Bytes::from_static(b"c"));
    }
}
