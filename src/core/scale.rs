//! Scale rules: how a window's raw counts become the handful of emojis a screen shows.

use std::fmt;
use std::str::FromStr;

use super::window::Counts;

/// How raw counts are scaled down to the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRule {
    /// The original Python rule: factor = total / N, each emoji shown ceil(count / factor) times.
    Normalize(u64),
    /// One shown emoji per K sent, rounded up: ceil(count / K) (the course spec used K = 1000).
    Per(u64),
    /// Hotstar's: only the N most frequent emojis (ties by emoji), normalized over their own total.
    Top(u64),
}

impl Default for ScaleRule {
    fn default() -> Self {
        Self::Normalize(4)
    }
}

/// A `--scale` value that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scale rule {given:?}: {why} (use normalize:N, per:K or top:N with a positive integer, e.g. normalize:4)")]
pub struct ScaleParseError {
    given: String,
    why: &'static str,
}

impl FromStr for ScaleRule {
    type Err = ScaleParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| ScaleParseError { given: s.to_string(), why };
        let (name, n) = s.trim().split_once(':').ok_or_else(|| err("missing `:`"))?;
        let n: u64 = n.trim().parse().map_err(|_| err("the number is not a positive integer"))?;
        if n == 0 {
            return Err(err("the number must be at least 1"));
        }
        match name.trim() {
            "normalize" => Ok(Self::Normalize(n)),
            "per" => Ok(Self::Per(n)),
            "top" => Ok(Self::Top(n)),
            _ => Err(err("unknown rule")),
        }
    }
}

impl fmt::Display for ScaleRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Normalize(n) => write!(f, "normalize:{n}"),
            Self::Per(k) => write!(f, "per:{k}"),
            Self::Top(n) => write!(f, "top:{n}"),
        }
    }
}

/// ceil(a / b) for b > 0, in integers so no float rounding decides a shown emoji.
fn div_ceil(a: u128, b: u128) -> u64 {
    u64::try_from(a.div_ceil(b)).unwrap_or(u64::MAX)
}

/// ceil(count / (total / n)) == ceil(count * n / total), exactly.
fn normalize(counts: &Counts, n: u64) -> Counts {
    let total: u128 = counts.values().map(|&c| u128::from(c)).sum();
    if total == 0 {
        return Counts::new();
    }
    counts.iter().filter(|(_, c)| **c > 0).map(|(e, &c)| (e.clone(), div_ceil(u128::from(c) * u128::from(n), total))).collect()
}

impl ScaleRule {
    /// The swarm for a window's counts. Emojis with no count are left out.
    pub fn apply(&self, counts: &Counts) -> Counts {
        match *self {
            Self::Normalize(n) => normalize(counts, n),
            Self::Per(k) => {
                counts.iter().filter(|(_, c)| **c > 0).map(|(e, &c)| (e.clone(), div_ceil(u128::from(c), u128::from(k)))).collect()
            }
            Self::Top(n) => {
                let mut ranked: Vec<(&String, &u64)> = counts.iter().filter(|(_, c)| **c > 0).collect();
                ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                let top: Counts = ranked.into_iter().take(usize::try_from(n).unwrap_or(usize::MAX)).map(|(e, c)| (e.clone(), *c)).collect();
                normalize(&top, n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(pairs: &[(&str, u64)]) -> Counts {
        pairs.iter().map(|(e, c)| (e.to_string(), *c)).collect()
    }

    #[test]
    fn parses_and_prints() {
        for s in ["normalize:4", "per:1000", "top:3"] {
            assert_eq!(s.parse::<ScaleRule>().unwrap().to_string(), s);
        }
        for bad in ["normalize", "per:0", "top:-1", "avg:3", "per:x"] {
            let e = bad.parse::<ScaleRule>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn normalize_matches_the_original_by_hand() {
        // total 5234, factor 1308.5: ceil(3000/1308.5)=3, ceil(2234/1308.5)=2 — the contract's example.
        let c = counts(&[("😀", 3000), ("😂", 2234)]);
        assert_eq!(ScaleRule::Normalize(4).apply(&c), counts(&[("😀", 3), ("😂", 2)]));
        // total 100, factor 25: 50→2, 30→2 (1.2), 20→1 (0.8).
        let c = counts(&[("a", 50), ("b", 30), ("c", 20)]);
        assert_eq!(ScaleRule::Normalize(4).apply(&c), counts(&[("a", 2), ("b", 2), ("c", 1)]));
        // Exact multiples must not round up: total 8, factor 2: 4→2, 4→2.
        let c = counts(&[("a", 4), ("b", 4)]);
        assert_eq!(ScaleRule::Normalize(4).apply(&c), counts(&[("a", 2), ("b", 2)]));
        // One emoji alone is always N.
        assert_eq!(ScaleRule::Normalize(4).apply(&counts(&[("a", 7)])), counts(&[("a", 4)]));
        assert!(ScaleRule::Normalize(4).apply(&Counts::new()).is_empty());
    }

    #[test]
    fn per_k_by_hand() {
        let c = counts(&[("a", 1000), ("b", 1001), ("c", 1), ("d", 0)]);
        assert_eq!(ScaleRule::Per(1000).apply(&c), counts(&[("a", 1), ("b", 2), ("c", 1)]));
    }

    #[test]
    fn top_n_by_hand() {
        let c = counts(&[("a", 10), ("b", 60), ("c", 30), ("d", 30)]);
        // Top 2: b (60) and c (30, wins the tie with d by order); total 90, factor 45: 60→2, 30→1.
        assert_eq!(ScaleRule::Top(2).apply(&c), counts(&[("b", 2), ("c", 1)]));
    }

    proptest! {
        #[test]
        fn every_sent_emoji_shows_and_normalize_is_bounded(cs in proptest::collection::btree_map("[a-h]", 1u64..1_000_000, 1..8), n in 1u64..20) {
            let s = ScaleRule::Normalize(n).apply(&cs);
            prop_assert_eq!(s.len(), cs.len());
            let shown: u64 = s.values().sum();
            // Each term rounds up by less than one.
            prop_assert!(shown >= n && shown < n + cs.len() as u64);
            for (e, c) in &cs {
                let f = cs.values().sum::<u64>() as f64 / n as f64;
                prop_assert!((s[e] as f64) >= (*c as f64 / f) - 1e-9);
            }
        }

        #[test]
        fn top_shows_at_most_n_emojis(cs in proptest::collection::btree_map("[a-h]", 1u64..1000, 0..8), n in 1u64..5) {
            let s = ScaleRule::Top(n).apply(&cs);
            prop_assert!(s.len() as u64 <= n);
            let min_shown = s.keys().map(|e| cs[e]).min();
            if let Some(min_shown) = min_shown {
                let hidden_max = cs.iter().filter(|(e, _)| !s.contains_key(*e)).map(|(_, c)| *c).max().unwrap_or(0);
                prop_assert!(hidden_max <= min_shown);
            }
        }
    }
}
