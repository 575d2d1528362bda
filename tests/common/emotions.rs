//! The emotion fields of published windows, recomputed from their counts with the library's core:
//! whatever mode published them (embedded, Kafka, a publisher restarted from its checkpoint), the
//! fields must be exactly what the default emotion map and trend settings give for that sequence.

use emostream::core::emotion::{EmotionMap, TrendConfig, TrendState, observe};
use serde_json::Value;

/// `windows`: every window since the publisher's first, in order (e.g. `GET /windows`).
pub fn assert_recomputed(windows: &[Value], who: &str) {
    assert!(!windows.is_empty(), "{who}: no windows to check");
    let (map, config) = (EmotionMap::default(), TrendConfig::default());
    let mut state = TrendState::default();
    for w in windows {
        let counts = serde_json::from_value(w["counts"].clone()).expect("counts");
        let want = serde_json::to_value(observe(&map, &config, &mut state, &counts)).expect("mood serializes");
        for field in ["emotions", "mood", "trend", "surges"] {
            assert_eq!(w.get(field).unwrap_or(&Value::Null), &want[field], "{who}: `{field}` of window {}", w["window_start"]);
        }
    }
}
