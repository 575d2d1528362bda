//! The swarm message every client receives for a window (wire contract v1).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::emotion::Mood;
use super::scale::ScaleRule;
use super::window::Counts;

/// One published window. Fields may be added; none removed or renamed (wire contract v1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwarmMessage {
    /// Window bounds, ms since the epoch.
    pub window_start: i64,
    pub window_end: i64,
    /// Sum of `counts`.
    pub total: u64,
    /// Raw counts per emoji.
    pub counts: Counts,
    /// Counts after the scale rule: what a screen shows.
    pub swarm: Counts,
    /// Events in this window that arrived after their own window had closed.
    #[serde(default)]
    pub late: u64,
    /// When the publisher closed the window (ms since the epoch): the start of delivery latency.
    #[serde(default)]
    pub closed_at: i64,
    /// Emotions, mood, trend and surges of the window.
    #[serde(flatten, default)]
    pub mood: Mood,
}

impl SwarmMessage {
    /// Builds the message for a merged window.
    pub fn new(window_start: i64, window_end: i64, counts: Counts, late: u64, rule: ScaleRule, closed_at: i64) -> Self {
        let total = counts.values().sum();
        let swarm = rule.apply(&counts);
        Self { window_start, window_end, total, counts, swarm, late, closed_at, mood: Mood::default() }
    }

    /// Adds the window's emotion fields.
    #[must_use]
    pub fn with_mood(mut self, mood: Mood) -> Self {
        self.mood = mood;
        self
    }

    /// The JSON bytes sent to every client: serialized once per window.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a swarm message always serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_the_contract_fields() {
        let counts: Counts = [("😀".to_string(), 3000), ("😂".to_string(), 2234)].into_iter().collect();
        let m = SwarmMessage::new(1_700_000_000_000, 1_700_000_002_000, counts, 0, ScaleRule::Normalize(4), 1);
        let v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        assert_eq!(v["window_start"], 1_700_000_000_000_i64);
        assert_eq!(v["window_end"], 1_700_000_002_000_i64);
        assert_eq!(v["total"], 5234);
        assert_eq!(v["counts"]["😀"], 3000);
        assert_eq!(v["swarm"]["😀"], 3);
        assert_eq!(v["swarm"]["😂"], 2);
    }
}
