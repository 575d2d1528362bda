//! Tumbling windows over ingest time, per log partition.
//!
//! Windows are aligned to multiples of their size since the Unix epoch, so every process agrees on
//! them without talking. A window closes when the caller's watermark passes its end; after that an
//! event for it is *late* and counts in the earliest window still open, so it is never dropped.
//! The aggregator is pure: time comes in as arguments, nothing here reads a clock.

use std::collections::{BTreeMap, VecDeque};

/// Emoji (display form) → count. Ordered so that every serialization of a window is the same.
pub type Counts = BTreeMap<String, u64>;

/// The size of a window and its alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    size_ms: i64,
}

impl WindowSpec {
    /// # Panics
    /// If `size_ms` is not positive; configuration validates it first.
    pub fn new(size_ms: i64) -> Self {
        assert!(size_ms > 0, "window size must be positive");
        Self { size_ms }
    }

    pub fn size_ms(self) -> i64 {
        self.size_ms
    }

    /// Start of the window holding `ts_ms`.
    pub fn start_of(self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.size_ms) * self.size_ms
    }
}

/// One partition's counts for one closed window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Partial {
    pub window_start: i64,
    pub window_end: i64,
    pub counts: Counts,
    /// How many of `counts` arrived after their own window had closed.
    pub late: u64,
}

impl Partial {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Where a recorded event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In the window of its own timestamp.
    OnTime,
    /// Its window had closed; it counts in the earliest open window instead.
    Late,
}

/// Tumbling-window counter for one partition.
#[derive(Debug, Clone)]
pub struct WindowAggregator {
    spec: WindowSpec,
    /// Start of the earliest window not yet closed.
    next_to_close: i64,
    /// Open windows with counts, by start; windows without counts are implied.
    open: BTreeMap<i64, (Counts, u64)>,
}

impl WindowAggregator {
    /// A fresh aggregator whose first window is the one holding `start_ms`.
    pub fn new(spec: WindowSpec, start_ms: i64) -> Self {
        Self { spec, next_to_close: spec.start_of(start_ms), open: BTreeMap::new() }
    }

    /// Resumes after a window that was already closed (and emitted) elsewhere.
    pub fn resume_after(spec: WindowSpec, closed_through_start: i64) -> Self {
        Self { spec, next_to_close: closed_through_start + spec.size_ms, open: BTreeMap::new() }
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    /// Start of the earliest window still open.
    pub fn next_to_close(&self) -> i64 {
        self.next_to_close
    }

    /// Whether any open window holds counts.
    pub fn has_pending(&self) -> bool {
        !self.open.is_empty()
    }

    /// Counts `n` of `emoji` received at `ts_ms`.
    pub fn record(&mut self, ts_ms: i64, emoji: &str, n: u64) -> Placement {
        let own = self.spec.start_of(ts_ms);
        let (start, placement) = if own < self.next_to_close { (self.next_to_close, Placement::Late) } else { (own, Placement::OnTime) };
        let (counts, late) = self.open.entry(start).or_default();
        match counts.get_mut(emoji) {
            Some(c) => *c += n,
            None => {
                counts.insert(emoji.to_owned(), n);
            }
        }
        if placement == Placement::Late {
            *late += n;
        }
        placement
    }

    /// Closes every window that ends at or before `watermark_ms`, in order, empty ones included.
    pub fn advance(&mut self, watermark_ms: i64) -> Vec<Partial> {
        let mut out = Vec::new();
        while self.next_to_close + self.spec.size_ms <= watermark_ms {
            out.push(self.close_next());
        }
        out
    }

    /// Closes every window up to and including the one holding `now_ms`, and any later window that
    /// already has counts: what shutdown publishes so nothing acked is left behind.
    pub fn flush(&mut self, now_ms: i64) -> Vec<Partial> {
        let last = self.open.keys().next_back().copied().unwrap_or(i64::MIN).max(self.spec.start_of(now_ms));
        let mut out = Vec::new();
        while self.next_to_close <= last {
            out.push(self.close_next());
        }
        out
    }

    fn close_next(&mut self) -> Partial {
        let start = self.next_to_close;
        let (counts, late) = self.open.remove(&start).unwrap_or_default();
        self.next_to_close += self.spec.size_ms;
        Partial { window_start: start, window_end: start + self.spec.size_ms, counts, late }
    }
}

/// Merges the partials of one window from every partition into one set of counts.
pub fn merge<'a>(partials: impl IntoIterator<Item = &'a Partial>) -> (Counts, u64) {
    let mut counts = Counts::new();
    let mut late = 0;
    for p in partials {
        for (emoji, n) in &p.counts {
            *counts.entry(emoji.clone()).or_default() += n;
        }
        late += p.late;
    }
    (counts, late)
}

/// Keeps the last `capacity` items: bounded history of published windows.
#[derive(Debug, Clone)]
pub struct Recent<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> Recent<T> {
    pub fn new(capacity: usize) -> Self {
        Self { items: VecDeque::with_capacity(capacity.min(4096)), capacity: capacity.max(1) }
    }

    pub fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter()
    }

    pub fn last(&self) -> Option<&T> {
        self.items.back()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: i64 = 2000;

    #[test]
    fn windows_align_to_the_epoch() {
        let s = WindowSpec::new(W);
        assert_eq!(s.start_of(1_700_000_001_999), 1_700_000_000_000);
        assert_eq!(s.start_of(1_700_000_002_000), 1_700_000_002_000);
        assert_eq!(s.start_of(-1), -2000);
        assert_eq!(WindowSpec::new(500).start_of(1_234), 1_000);
    }

    #[test]
    fn empty_windows_are_emitted_in_order() {
        let mut a = WindowAggregator::new(WindowSpec::new(W), 10_500);
        a.record(10_600, "😀", 2);
        a.record(14_100, "😂", 1);
        let closed = a.advance(16_000);
        let starts: Vec<_> = closed.iter().map(|p| p.window_start).collect();
        assert_eq!(starts, vec![10_000, 12_000, 14_000]);
        assert_eq!(closed[0].counts["😀"], 2);
        assert!(closed[1].counts.is_empty());
        assert_eq!(closed[2].counts["😂"], 1);
        assert!(a.advance(16_000).is_empty(), "a window is emitted once");
    }

    #[test]
    fn late_event_counts_in_the_next_open_window() {
        let mut a = WindowAggregator::new(WindowSpec::new(W), 0);
        assert_eq!(a.advance(2_000).len(), 1);
        assert_eq!(a.record(1_999, "😀", 3), Placement::Late);
        assert_eq!(a.record(2_001, "😀", 1), Placement::OnTime);
        let p = a.advance(4_000);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].window_start, 2_000);
        assert_eq!(p[0].counts["😀"], 4);
        assert_eq!(p[0].late, 3);
    }

    #[test]
    fn flush_emits_the_current_and_any_future_window() {
        let mut a = WindowAggregator::new(WindowSpec::new(W), 0);
        a.record(500, "😀", 1);
        a.record(6_500, "😂", 1);
        let p = a.flush(1_000);
        assert_eq!(p.iter().map(|p| p.window_start).collect::<Vec<_>>(), vec![0, 2_000, 4_000, 6_000]);
        assert!(!a.has_pending());
    }

    #[test]
    fn resume_after_continues_with_the_next_window() {
        let mut a = WindowAggregator::resume_after(WindowSpec::new(W), 4_000);
        assert_eq!(a.record(5_000, "😀", 1), Placement::Late);
        assert_eq!(a.advance(8_000)[0].window_start, 6_000);
    }

    #[test]
    fn recent_keeps_the_last_items() {
        let mut r = Recent::new(2);
        r.push(1);
        r.push(2);
        r.push(3);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), vec![2, 3]);
    }

    proptest! {
        /// Whatever the order of events and watermarks, every recorded emoji is in exactly one emitted
        /// window, windows are consecutive and each is emitted once.
        #[test]
        fn counts_are_conserved_and_windows_consecutive(
            size in 1i64..5_000,
            start in 0i64..1_000_000,
            steps in proptest::collection::vec((0i64..20_000, 0usize..4, 1u64..50, any::<bool>()), 0..200),
        ) {
            let emojis = ["😀", "😂", "😍", "👍"];
            let mut a = WindowAggregator::new(WindowSpec::new(size), start);
            let mut sent = 0u64;
            let mut out = Vec::new();
            let mut clock = start;
            for (dt, e, n, tick) in steps {
                if tick {
                    clock += dt / 4;
                    out.extend(a.advance(clock));
                } else {
                    // Events may be stamped before the watermark (late) or after it.
                    a.record(start + dt, emojis[e], n);
                    sent += n;
                }
            }
            out.extend(a.flush(clock));
            let got: u64 = out.iter().map(Partial::total).sum();
            prop_assert_eq!(got, sent);
            for pair in out.windows(2) {
                prop_assert_eq!(pair[0].window_end, pair[1].window_start);
            }
            for p in &out {
                prop_assert_eq!(p.window_start.rem_euclid(size), 0);
                prop_assert_eq!(p.window_end - p.window_start, size);
            }
            prop_assert!(!a.has_pending());
        }

        #[test]
        fn merge_sums_every_partial(parts in proptest::collection::vec(proptest::collection::btree_map("[a-c]", 0u64..100, 0..3), 0..6)) {
            let partials: Vec<Partial> = parts.iter().map(|c| Partial { window_start: 0, window_end: 1, counts: c.clone(), late: 0 }).collect();
            let (m, _) = merge(&partials);
            let want: u64 = parts.iter().flat_map(|c| c.values()).sum();
            prop_assert_eq!(m.values().sum::<u64>(), want);
        }
    }
}
