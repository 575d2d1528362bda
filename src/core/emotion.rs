//! Emotions: what a window's emojis say about the crowd's mood.
//!
//! Each emoji maps to an emotion and a valence in [-1, 1]. A window gets counts per emotion, a mood
//! (count-weighted valence), a trend (per emotion, an exponentially weighted moving average over
//! recent windows) and surges: emotions whose count is at least `factor` times their moving average,
//! with a minimum volume — the wicket or goal moment. Pure: the tracker's state is passed through the
//! publisher's checkpoint, so embedded and Kafka mode compute the same fields.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::window::Counts;

/// The built-in map: every default emoji, and a few more common ones.
const DEFAULT_MAP: &[(&str, &str, f64)] = &[
    ("😀", "joy", 0.8),
    ("😃", "joy", 0.8),
    ("😊", "joy", 0.7),
    ("😂", "laughter", 0.9),
    ("🤣", "laughter", 0.9),
    ("😍", "love", 0.9),
    ("❤️", "love", 0.9),
    ("🥰", "love", 0.9),
    ("👍", "approval", 0.6),
    ("👏", "approval", 0.7),
    ("🙏", "approval", 0.5),
    ("💯", "approval", 0.8),
    ("🔥", "celebration", 0.8),
    ("🎉", "celebration", 0.9),
    ("🏆", "celebration", 0.9),
    ("😮", "surprise", 0.1),
    ("😲", "surprise", 0.1),
    ("😱", "fear", -0.6),
    ("😨", "fear", -0.6),
    ("😢", "sadness", -0.7),
    ("😭", "sadness", -0.8),
    ("😡", "anger", -0.8),
    ("🤬", "anger", -0.9),
    ("👎", "disapproval", -0.6),
    ("🤔", "doubt", -0.1),
];

/// Emotion and valence of one emoji.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feeling {
    pub emotion: String,
    pub valence: f64,
}

/// Why an emotions file was refused.
#[derive(Debug, thiserror::Error)]
pub enum EmotionMapError {
    #[error("cannot read --emotions file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("--emotions file {path} is not valid: {why}")]
    Invalid { path: String, why: String },
}

/// Emoji → emotion and valence. Variation selectors are ignored, as in the emoji set.
#[derive(Debug, Clone)]
pub struct EmotionMap {
    by_key: HashMap<String, Feeling>,
}

fn key_of(s: &str) -> String {
    s.chars().filter(|c| !matches!(c, '\u{FE0F}' | '\u{FE0E}')).collect()
}

impl Default for EmotionMap {
    fn default() -> Self {
        let by_key = DEFAULT_MAP
            .iter()
            .map(|(e, emotion, valence)| (key_of(e), Feeling { emotion: (*emotion).to_string(), valence: *valence }))
            .collect();
        Self { by_key }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    emojis: BTreeMap<String, Feeling>,
}

impl EmotionMap {
    /// Reads a TOML file replacing the built-in map:
    ///
    /// ```toml
    /// [emojis]
    /// "😂" = { emotion = "laughter", valence = 0.9 }
    /// ```
    ///
    /// # Errors
    /// When the file cannot be read, is not of that form, or a valence is outside [-1, 1].
    pub fn from_toml_file(path: &Path) -> Result<Self, EmotionMapError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| EmotionMapError::Read { path: p.clone(), source })?;
        Self::from_toml(&text).map_err(|why| EmotionMapError::Invalid { path: p, why })
    }

    /// # Errors
    /// A message naming the bad entry.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_key = HashMap::new();
        for (emoji, feeling) in f.emojis {
            if !(-1.0..=1.0).contains(&feeling.valence) {
                return Err(format!("valence of {emoji:?} is {}; it must be within -1 and 1", feeling.valence));
            }
            if feeling.emotion.trim().is_empty() {
                return Err(format!("emotion of {emoji:?} is empty"));
            }
            by_key.insert(key_of(&emoji), feeling);
        }
        Ok(Self { by_key })
    }

    pub fn get(&self, emoji: &str) -> Option<&Feeling> {
        self.by_key.get(&key_of(emoji))
    }
}

/// Surge and trend settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrendConfig {
    /// Weight of the newest window in the moving average, in (0, 1].
    pub alpha: f64,
    /// A surge is a count at least this many times the moving average…
    pub surge_factor: f64,
    /// …and at least this many events.
    pub surge_min: u64,
    /// Windows seen before surges are reported (the average needs a history).
    pub warmup: u64,
}

impl Default for TrendConfig {
    fn default() -> Self {
        Self { alpha: 0.3, surge_factor: 3.0, surge_min: 20, warmup: 3 }
    }
}

/// The tracker's state carried from window to window (and through the publisher's checkpoint).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrendState {
    pub average: BTreeMap<String, f64>,
    pub windows: u64,
}

/// An emotion far above its recent average this window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Surge {
    pub emotion: String,
    pub count: u64,
    /// Its moving average before this window.
    pub average: f64,
    /// count / average (infinite averages are reported as the count itself).
    pub ratio: f64,
}

/// Emotion fields of one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mood {
    pub emotions: BTreeMap<String, u64>,
    /// Count-weighted valence; `None` when no emoji of the window has a known emotion.
    pub mood: Option<f64>,
    pub trend: BTreeMap<String, f64>,
    pub surges: Vec<Surge>,
}

/// Rounds for stable, readable JSON.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Computes a window's emotion fields and advances the trend state.
pub fn observe(map: &EmotionMap, config: &TrendConfig, state: &mut TrendState, counts: &Counts) -> Mood {
    let mut emotions: BTreeMap<String, u64> = BTreeMap::new();
    let (mut weighted, mut n) = (0.0, 0u64);
    for (emoji, &c) in counts {
        if let Some(f) = map.get(emoji) {
            *emotions.entry(f.emotion.clone()).or_default() += c;
            weighted += f.valence * c as f64;
            n += c;
        }
    }
    let mood = (n > 0).then(|| round3(weighted / n as f64));
    let mut surges = Vec::new();
    if state.windows >= config.warmup {
        for (emotion, &c) in &emotions {
            let avg = state.average.get(emotion).copied().unwrap_or(0.0);
            if c >= config.surge_min && c as f64 >= config.surge_factor * avg {
                let ratio = if avg > 0.0 { c as f64 / avg } else { c as f64 };
                surges.push(Surge { emotion: emotion.clone(), count: c, average: round3(avg), ratio: round3(ratio) });
            }
        }
        surges.sort_by(|a, b| b.ratio.total_cmp(&a.ratio).then_with(|| a.emotion.cmp(&b.emotion)));
    }
    // Every known emotion decays when absent, so a quiet crowd's averages fall back.
    let names: std::collections::BTreeSet<String> = state.average.keys().chain(emotions.keys()).cloned().collect();
    for name in names {
        let c = emotions.get(&name).copied().unwrap_or(0) as f64;
        let avg = state.average.entry(name).or_insert(0.0);
        *avg = if state.windows == 0 { c } else { config.alpha * c + (1.0 - config.alpha) * *avg };
    }
    state.average.retain(|_, v| *v >= 0.001);
    state.windows += 1;
    let trend = state.average.iter().map(|(k, v)| (k.clone(), round3(*v))).collect();
    Mood { emotions, mood, trend, surges }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(pairs: &[(&str, u64)]) -> Counts {
        pairs.iter().map(|(e, c)| (e.to_string(), *c)).collect()
    }

    #[test]
    fn default_map_covers_the_default_emoji_set() {
        let map = EmotionMap::default();
        for e in crate::core::emoji::DEFAULT_EMOJIS {
            assert!(map.get(e).is_some(), "{e} has no emotion");
        }
        assert_eq!(map.get("❤").unwrap().emotion, "love");
    }

    #[test]
    fn mood_is_the_count_weighted_valence() {
        let map = EmotionMap::default();
        let mut st = TrendState::default();
        // 3 × 0.9 (laughter) + 1 × -0.8 (anger) = 1.9 over 4
        let m = observe(&map, &TrendConfig::default(), &mut st, &counts(&[("😂", 3), ("😡", 1)]));
        assert_eq!(m.mood, Some(0.475));
        assert_eq!(m.emotions, [("anger".to_string(), 1), ("laughter".to_string(), 3)].into_iter().collect());
        assert_eq!(observe(&map, &TrendConfig::default(), &mut st, &Counts::new()).mood, None);
    }

    #[test]
    fn a_sudden_burst_is_a_surge_a_steady_crowd_is_not() {
        let map = EmotionMap::default();
        let cfg = TrendConfig::default();
        let mut st = TrendState::default();
        for _ in 0..5 {
            let m = observe(&map, &cfg, &mut st, &counts(&[("😂", 10), ("👍", 30)]));
            assert!(m.surges.is_empty(), "{m:?}");
        }
        let m = observe(&map, &cfg, &mut st, &counts(&[("😂", 300), ("👍", 30)]));
        assert_eq!(m.surges.len(), 1);
        assert_eq!(m.surges[0].emotion, "laughter");
        assert_eq!(m.surges[0].count, 300);
        assert_eq!(m.surges[0].average, 10.0);
        // The trend moved: 0.3 × 300 + 0.7 × 10 = 97
        assert_eq!(m.trend["laughter"], 97.0);
        // Small bursts stay under the volume minimum.
        let mut st = TrendState { windows: 10, ..Default::default() };
        assert!(observe(&map, &cfg, &mut st, &counts(&[("😂", 5)])).surges.is_empty());
    }

    #[test]
    fn files_replace_the_map_and_bad_files_are_refused() {
        let m = EmotionMap::from_toml("[emojis]\n\"🏏\" = { emotion = \"cricket\", valence = 0.5 }\n").unwrap();
        assert_eq!(m.get("🏏").unwrap().emotion, "cricket");
        assert!(m.get("😀").is_none());
        assert!(EmotionMap::from_toml("[emojis]\n\"🏏\" = { emotion = \"x\", valence = 2 }\n").unwrap_err().contains("within -1 and 1"));
        assert!(EmotionMap::from_toml("nope = 1").is_err());
    }

    proptest! {
        #[test]
        fn emotions_conserve_known_counts_and_mood_is_bounded(cs in proptest::collection::btree_map(proptest::sample::select(vec!["😀","😂","😡","😢","🦄"]), 0u64..1000, 0..5)) {
            let c: Counts = cs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            let map = EmotionMap::default();
            let m = observe(&map, &TrendConfig::default(), &mut TrendState::default(), &c);
            let known: u64 = c.iter().filter(|(e, _)| map.get(e).is_some()).map(|(_, v)| *v).sum();
            prop_assert_eq!(m.emotions.values().sum::<u64>(), known);
            if let Some(x) = m.mood { prop_assert!((-1.0..=1.0).contains(&x)); }
        }

        #[test]
        fn trend_state_round_trips_through_a_checkpoint(seq in proptest::collection::vec(0u64..500, 1..20)) {
            // The publisher's checkpoint carries the state: resuming from it gives the same fields.
            let map = EmotionMap::default();
            let cfg = TrendConfig::default();
            let mut a = TrendState::default();
            let mut outs = Vec::new();
            for (i, n) in seq.iter().enumerate() {
                if i == seq.len() / 2 {
                    a = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
                }
                outs.push(observe(&map, &cfg, &mut a, &counts(&[("😂", *n)])));
            }
            let mut b = TrendState::default();
            for (n, want) in seq.iter().zip(&outs) {
                prop_assert_eq!(&observe(&map, &cfg, &mut b, &counts(&[("😂", *n)])), want);
            }
        }
    }
}
