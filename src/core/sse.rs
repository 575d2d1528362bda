//! Reading Server-Sent Events: splitting a byte stream into events and taking an event's `id:` and
//! `data:`. One reader for every SSE consumer in the project (`emostream client`, the load
//! generator's viewers, the tests), tuned for the common case of one whole event per chunk.

use std::borrow::Cow;

use bytes::BytesMut;

/// Splits a stream of chunks into events, each ending with a blank line.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: BytesMut,
}

impl Splitter {
    /// Adds a chunk and calls `each` with every event it completes (blank line included).
    pub fn push(&mut self, chunk: &[u8], mut each: impl FnMut(&[u8])) {
        // A chunk that is exactly one event (what a subscriber writes) is passed on without a copy.
        if self.buf.is_empty() && chunk.ends_with(b"\n\n") && chunk.windows(2).filter(|w| w == b"\n\n").count() == 1 {
            each(chunk);
            return;
        }
        self.buf.extend_from_slice(chunk);
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event = self.buf.split_to(end + 2);
            each(&event);
        }
    }
}

/// One event's `id:` (if any) and its `data:` lines joined with `\n`; `None` for an event without
/// data, such as a `: keepalive` comment.
pub fn fields(event: &[u8]) -> (Option<&[u8]>, Option<Cow<'_, [u8]>>) {
    let mut id = None;
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in event.split(|b| *b == b'\n') {
        if let Some(v) = line.strip_prefix(b"id:") {
            id = Some(v.strip_prefix(b" ").unwrap_or(v));
        } else if let Some(d) = line.strip_prefix(b"data:") {
            let d = d.strip_prefix(b" ").unwrap_or(d);
            data = Some(match data {
                None => Cow::Borrowed(d),
                Some(prev) => {
                    let mut v = prev.into_owned();
                    v.push(b'\n');
                    v.extend_from_slice(d);
                    Cow::Owned(v)
                }
            });
        }
    }
    (id, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<(Option<String>, String)> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, |e| {
                if let (id, Some(d)) = fields(e) {
                    out.push((id.map(|i| String::from_utf8_lossy(i).into_owned()), String::from_utf8_lossy(&d).into_owned()));
                }
            });
        }
        out
    }

    #[test]
    fn events_split_across_and_within_chunks() {
        assert!(events(&[b"event: swarm\nid: 2000\ndata: {\"a\""]).is_empty(), "nothing before the blank line");
        let got = events(&[b"event: swarm\nid: 2000\ndata: {\"a\"", b":1}\n\n: keepalive\n\nevent: swarm\nid: 4000\ndata: {}\n\n"]);
        assert_eq!(got, vec![(Some("2000".into()), "{\"a\":1}".into()), (Some("4000".into()), "{}".into())]);
    }

    #[test]
    fn a_whole_event_per_chunk_and_multi_line_data() {
        assert_eq!(events(&[b"id: 1\ndata: x\n\n"]), vec![(Some("1".into()), "x".into())]);
        assert_eq!(events(&[b"data: a\ndata: b\n\n"]), vec![(None, "a\nb".into())]);
        assert!(events(&[b": keepalive\n\n"]).is_empty());
    }
}
