//! What the stages write to the log, and how it is encoded.
//!
//! Event batches are binary because they are the bulk of the traffic: ingest has already counted
//! equal (receive-millisecond, emoji) pairs together, so a batch of 10 000 emojis from one request is a
//! handful of entries. Partials are JSON: a few per window, and easy to read with Kafka's tools.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::window::Partial;

const EVENT_BATCH_V1: u8 = 1;

/// `count` events of `emoji` received by ingest at `ts_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub ts_ms: i64,
    pub emoji: &'a str,
    pub count: u32,
}

/// A record that does not decode: written by something else, or corrupted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable {what} record: {why}")]
pub struct DecodeError {
    pub what: &'static str,
    pub why: String,
}

/// Builds one event-batch record.
#[derive(Debug, Default)]
pub struct EventBatchWriter {
    buf: BytesMut,
    events: u64,
}

impl EventBatchWriter {
    pub fn new() -> Self {
        let mut buf = BytesMut::with_capacity(256);
        buf.put_u8(EVENT_BATCH_V1);
        Self { buf, events: 0 }
    }

    pub fn push(&mut self, ts_ms: i64, emoji: &str, count: u32) {
        let len = u8::try_from(emoji.len()).expect("emojis are at most 64 bytes");
        self.buf.put_i64_le(ts_ms);
        self.buf.put_u32_le(count);
        self.buf.put_u8(len);
        self.buf.put_slice(emoji.as_bytes());
        self.events += u64::from(count);
    }

    /// Events (not entries) in the batch.
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// Decodes an event-batch record.
///
/// # Errors
/// When the record is not a version-1 event batch.
pub fn decode_event_batch(mut b: &[u8]) -> Result<Vec<Entry<'_>>, DecodeError> {
    let err = |why: &str| DecodeError { what: "event batch", why: why.to_string() };
    if b.first() != Some(&EVENT_BATCH_V1) {
        return Err(err("unknown version byte"));
    }
    b.advance(1);
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 13 {
            return Err(err("truncated entry header"));
        }
        let ts_ms = b.get_i64_le();
        let count = b.get_u32_le();
        let len = usize::from(b.get_u8());
        if b.len() < len {
            return Err(err("truncated emoji"));
        }
        let emoji = std::str::from_utf8(&b[..len]).map_err(|_| err("emoji is not UTF-8"))?;
        b.advance(len);
        out.push(Entry { ts_ms, emoji, count });
    }
    Ok(out)
}

/// A partial as written to `emoji_partials`: which event partition it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialRecord {
    pub partition: u32,
    /// True on the first window a partition ever reported: windows before it had no aggregator and
    /// count as empty for this partition (their events, if any, are counted late in this one).
    #[serde(default)]
    pub first: bool,
    #[serde(flatten)]
    pub partial: Partial,
}

impl PartialRecord {
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a partial always serializes"))
    }

    /// # Errors
    /// When the bytes are not a partial record.
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(b).map_err(|e| DecodeError { what: "partial", why: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_batch_round_trips() {
        let mut w = EventBatchWriter::new();
        w.push(1_700_000_000_123, "😀", 3);
        w.push(-5, "❤️", 1);
        assert_eq!(w.events(), 4);
        let b = w.finish();
        let e = decode_event_batch(&b).unwrap();
        assert_eq!(e, vec![Entry { ts_ms: 1_700_000_000_123, emoji: "😀", count: 3 }, Entry { ts_ms: -5, emoji: "❤️", count: 1 }]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_event_batch(b"").is_err());
        assert!(decode_event_batch(&[1, 0, 0]).is_err());
        assert!(decode_event_batch(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(PartialRecord::from_bytes(b"{").is_err());
    }
}
