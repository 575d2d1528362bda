//! The verdict of a load run, pure: what every viewer received against what was acked.
//!
//! Checks, in order:
//! 1. every viewer's windows are consecutive (each starts one window after the previous: no gap, no
//!    repeat, nothing out of order), and its stream did not end early;
//! 2. every viewer has every window of the checked range `[from, to]`;
//! 3. every viewer got the same bytes for the same window (compared by a 64-bit hash);
//! 4. when counts are checked, the sum of `counts` over `[from, to]` equals what was acked, per emoji.

use std::collections::{BTreeMap, HashMap};

/// One window as a viewer received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub start: i64,
    pub end: i64,
    /// When the publisher closed it, ms since the epoch.
    pub closed_at: i64,
    /// When this viewer had it, µs since the epoch.
    pub recv_us: i64,
    /// Hash of the message bytes.
    pub hash: u64,
}

/// Everything one viewer saw.
#[derive(Debug, Clone, Default)]
pub struct ViewerLog {
    pub id: String,
    pub windows: Vec<Received>,
    /// Why the stream ended before the run did (`None` while it was held to the end).
    pub ended: Option<String>,
}

/// What the run expects.
#[derive(Debug, Clone)]
pub struct Expect {
    pub size_ms: i64,
    /// First window every viewer must have (W0: the first one after all connected).
    pub from: i64,
    /// Last window checked (inclusive).
    pub to: i64,
    /// Emojis acked per emoji; `None` skips the count check.
    pub acked: Option<BTreeMap<String, u64>>,
}

/// The outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    pub pass: bool,
    pub problems: Vec<String>,
    /// Sum of `counts` over the checked range.
    pub counted: u64,
    pub counted_by_emoji: BTreeMap<String, u64>,
    /// Windows in the checked range.
    pub windows: u64,
}

/// Most problems listed; the rest are summed up in one line.
const MAX_LISTED: usize = 20;

/// Judges a run. `counts` holds each window's `counts` as first received.
pub fn verify(viewers: &[ViewerLog], counts: &BTreeMap<i64, BTreeMap<String, u64>>, e: &Expect) -> Verdict {
    let mut problems = Vec::new();
    let mut more = 0usize;
    let mut report = |p: String| {
        if problems.len() < MAX_LISTED {
            problems.push(p);
        } else {
            more += 1;
        }
    };
    let windows = if e.to >= e.from { ((e.to - e.from) / e.size_ms + 1) as u64 } else { 0 };

    // 1 and 2: each viewer alone.
    for v in viewers {
        for w in &v.windows {
            if w.end - w.start != e.size_ms {
                report(format!("client {}: window {} is {} ms long, expected {}", v.id, w.start, w.end - w.start, e.size_ms));
            }
        }
        for pair in v.windows.windows(2) {
            let (a, b) = (pair[0].start, pair[1].start);
            let step = b - a;
            if step == e.size_ms {
                continue;
            }
            let what = if step == 0 {
                "repeated".to_string()
            } else if step < 0 {
                "out of order".to_string()
            } else if step % e.size_ms == 0 {
                format!("gap of {} windows", step / e.size_ms - 1)
            } else {
                "misaligned".to_string()
            };
            report(format!("client {}: window {a} then {b} ({what})", v.id));
        }
        if windows > 0 {
            let first = v.windows.first().map(|w| w.start);
            let last = v.windows.last().map(|w| w.start);
            let has_from = first.is_some_and(|f| f <= e.from);
            let has_to = last.is_some_and(|l| l >= e.to);
            if !has_from || !has_to {
                let got = match (first, last) {
                    (Some(f), Some(l)) => format!("got {f}..={l}"),
                    _ => "got none".to_string(),
                };
                let why = v.ended.as_deref().map(|r| format!("; stream ended: {r}")).unwrap_or_default();
                report(format!("client {}: missing windows of {}..={} ({got}{why})", v.id, e.from, e.to));
            }
        }
    }

    // 3: the same bytes for the same window, everywhere.
    let mut seen: HashMap<i64, (u64, &str)> = HashMap::new();
    let mut differing: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for v in viewers {
        for w in &v.windows {
            let (h, first) = *seen.entry(w.start).or_insert((w.hash, &v.id));
            if h != w.hash {
                let d = differing.entry(w.start).or_default();
                if d.is_empty() {
                    d.push(first);
                }
                d.push(&v.id);
            }
        }
    }
    for (start, who) in &differing {
        let n = who.len();
        let list = who.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        report(format!("window {start}: clients got different messages ({list}{})", if n > 5 { ", …" } else { "" }));
    }

    // 4: counts.
    let mut counted_by_emoji: BTreeMap<String, u64> = BTreeMap::new();
    let mut w = e.from;
    while windows > 0 && w <= e.to {
        match counts.get(&w) {
            Some(c) => {
                for (emoji, n) in c {
                    *counted_by_emoji.entry(emoji.clone()).or_default() += n;
                }
            }
            None => report(format!("window {w}: no viewer received it, so its counts are unknown")),
        }
        w += e.size_ms;
    }
    let counted = counted_by_emoji.values().sum();
    if let Some(acked) = &e.acked {
        let acked_total: u64 = acked.values().sum();
        if acked_total != counted {
            let diff = i128::from(counted) - i128::from(acked_total);
            report(format!("counted {counted} emojis in windows {}..={} but {acked_total} were acked ({diff:+})", e.from, e.to));
        }
        let emojis: std::collections::BTreeSet<&String> = acked.keys().chain(counted_by_emoji.keys()).collect();
        for emoji in emojis {
            let (a, c) = (acked.get(emoji).copied().unwrap_or(0), counted_by_emoji.get(emoji).copied().unwrap_or(0));
            if a != c {
                report(format!("emoji {emoji}: counted {c}, acked {a} ({:+})", i128::from(c) - i128::from(a)));
            }
        }
    }
    if more > 0 {
        problems.push(format!("… and {more} more problems"));
    }
    Verdict { pass: problems.is_empty(), problems, counted, counted_by_emoji, windows }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn rx(start: i64) -> Received {
        Received { start, end: start + S, closed_at: start + S, recv_us: (start + S + 1) * 1000, hash: start as u64 }
    }

    fn viewer(id: &str, starts: &[i64]) -> ViewerLog {
        ViewerLog { id: id.into(), windows: starts.iter().map(|&s| rx(s)).collect(), ended: None }
    }

    fn counts(per_window: &[(i64, u64)]) -> BTreeMap<i64, BTreeMap<String, u64>> {
        per_window.iter().map(|&(w, n)| (w, [("😀".to_string(), n)].into_iter().collect())).collect()
    }

    fn expect(from: i64, to: i64, acked: u64) -> Expect {
        Expect { size_ms: S, from, to, acked: Some([("😀".to_string(), acked)].into_iter().collect()) }
    }

    #[test]
    fn a_clean_run_passes() {
        let vs = [viewer("a", &[0, 1000, 2000, 3000]), viewer("b", &[1000, 2000, 3000])];
        let v = verify(&vs, &counts(&[(0, 9), (1000, 2), (2000, 3), (3000, 0)]), &expect(1000, 3000, 5));
        assert!(v.pass, "{:?}", v.problems);
        assert_eq!((v.counted, v.windows), (5, 3));
    }

    #[test]
    fn a_gap_fails_and_names_the_client() {
        let vs = [viewer("a", &[1000, 2000, 3000]), viewer("b", &[1000, 3000])];
        let v = verify(&vs, &counts(&[(1000, 1), (2000, 1), (3000, 1)]), &expect(1000, 3000, 3));
        assert!(!v.pass);
        assert_eq!(v.problems, vec!["client b: window 1000 then 3000 (gap of 1 windows)"]);
    }

    #[test]
    fn a_repeat_fails() {
        let vs = [viewer("a", &[1000, 2000, 2000, 3000])];
        let v = verify(&vs, &counts(&[(1000, 0), (2000, 0), (3000, 0)]), &expect(1000, 3000, 0));
        assert_eq!(v.problems, vec!["client a: window 2000 then 2000 (repeated)"]);
    }

    #[test]
    fn different_bytes_between_clients_fail() {
        let mut b = viewer("b", &[1000, 2000]);
        b.windows[1].hash = 42;
        let vs = [viewer("a", &[1000, 2000]), b, viewer("c", &[1000, 2000])];
        let v = verify(&vs, &counts(&[(1000, 0), (2000, 0)]), &expect(1000, 2000, 0));
        assert_eq!(v.problems, vec!["window 2000: clients got different messages (a, b)"]);
    }

    #[test]
    fn a_count_mismatch_fails_with_the_difference() {
        let vs = [viewer("a", &[1000, 2000])];
        let v = verify(&vs, &counts(&[(1000, 4), (2000, 5)]), &expect(1000, 2000, 10));
        assert!(!v.pass);
        assert_eq!(v.problems[0], "counted 9 emojis in windows 1000..=2000 but 10 were acked (-1)");
        assert_eq!(v.problems[1], "emoji 😀: counted 9, acked 10 (-1)");
    }

    #[test]
    fn a_stream_that_ended_early_is_missing_windows() {
        let mut a = viewer("a", &[1000]);
        a.ended = Some("too slow".into());
        let v = verify(&[a], &counts(&[(1000, 0), (2000, 0)]), &expect(1000, 2000, 0));
        assert_eq!(v.problems, vec!["client a: missing windows of 1000..=2000 (got 1000..=1000; stream ended: too slow)"]);
    }

    #[test]
    fn no_count_check_when_not_the_only_sender() {
        let vs = [viewer("a", &[1000])];
        let mut e = expect(1000, 1000, 0);
        e.acked = None;
        assert!(verify(&vs, &counts(&[(1000, 7)]), &e).pass);
    }
}
