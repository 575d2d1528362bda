//! What `emostream load` runs, and the small languages its flags take: the emoji mix and bursts.

use std::time::Duration;


/// How viewers receive windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadTransport {
    /// Server-Sent Events (`GET /stream/{id}`).
    Sse,
    /// WebSocket (`GET /ws/{id}`).
    Ws,
    /// Every other viewer on each.
    Mixed,
}

/// What `emostream load` runs (its flags, see `emostream load --help`).
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Ingest API base URL (POST /emoji, POST /emojis).
    pub ingest: String,

    /// Subscription and delivery API base URL.
    pub api: String,

    /// Viewers: each subscribes and holds a stream for the whole run (0: only send).
    pub clients: usize,

    /// Viewers that also send emojis (the first N); with --clients 0, independent senders.
    pub senders: usize,

    /// How viewers receive windows.
    pub transport: LoadTransport,

    /// Put every viewer on this cluster (spread over its subscribers); default: least loaded anywhere.
    pub cluster: Option<u32>,

    /// Emojis per second per sender, Poisson arrivals; 0 sends as fast as the server answers.
    pub rate: f64,

    /// Emoji mix with weights, e.g. "😀=5,😂=3,👍=1" (weight 1 when omitted).
    pub mix: Mix,

    /// Rate bursts: xM@START+LEN, comma-separated (e.g. x10@5s+2s).
    pub burst: Option<Bursts>,

    /// Emojis per request: 1 uses POST /emoji, more uses POST /emojis with a JSON array.
    pub batch: u32,

    /// How long senders send (e.g. 10s, 1m).
    pub duration: Duration,

    /// HTTP/1.1 keep-alive connections the senders share.
    pub connections: u32,

    /// Requests in flight per connection (pipelined).
    pub concurrency: u32,

    /// Streams opened at once while viewers connect.
    pub connect_concurrency: usize,

    /// Skip the count check (other senders are active, so counts cannot match).
    pub no_count_check: bool,

    /// PID of the server: its RSS and CPU time are sampled and reported (Linux /proc).
    pub server_pid: Option<u32>,

    /// Seconds to hold the viewers after they connected before sending starts (memory sampling).
    pub hold: Duration,

    /// Random seed (default: from the clock).
    pub seed: Option<u64>,

    /// Print one JSON object with the results on stdout instead of the table.
    pub json: bool,

    /// Write the per-second timeline and the latency histogram into the JSON (for plots).
    pub detail: bool,

    /// Give up on viewers and windows after this long past the expected time.
    pub timeout: Duration,
}

/// A duration in a burst (`5s`, `500ms`).
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (write e.g. 500ms, 2s or 1m)"))
}

/// Emojis and their relative weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix(pub Vec<(String, f64)>);

/// Parses `😀=5,😂=3,👍` (a missing weight is 1).
///
/// # Errors
/// When a weight is not a non-negative number or every weight is zero.
pub fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (emoji, w) = match part.rsplit_once('=') {
            Some((e, w)) => {
                let w: f64 = w.trim().parse().map_err(|_| format!("weight {w:?} of {e:?} is not a number (write e.g. 😀=5,😂=3)"))?;
                (e.trim(), w)
            }
            None => (part, 1.0),
        };
        if !(w.is_finite() && w >= 0.0) {
            return Err(format!("weight of {emoji:?} must be 0 or more"));
        }
        if emoji.contains('"') || emoji.contains('\\') {
            return Err(format!("{emoji:?} is not an emoji"));
        }
        out.push((emoji.to_string(), w));
    }
    if out.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
        return Err("--mix needs at least one emoji with a positive weight".into());
    }
    Ok(Mix(out))
}

/// One burst: the rate is multiplied by `factor` during `[start, start + len)` of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    pub factor: f64,
    pub start: Duration,
    pub len: Duration,
}

/// Every burst of a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bursts(pub Vec<Burst>);

impl Bursts {
    /// The rate multiplier `elapsed` into the run (bursts that overlap multiply).
    pub fn factor_at(&self, elapsed: Duration) -> f64 {
        self.0.iter().filter(|b| elapsed >= b.start && elapsed < b.start + b.len).map(|b| b.factor).product()
    }
}

/// Parses `x10@5s+2s[,x3@20s+5s]`.
///
/// # Errors
/// A message with an example when a burst does not have that shape.
pub fn parse_bursts(s: &str) -> Result<Bursts, String> {
    let bad = |p: &str, why: &str| format!("burst {p:?}: {why} (write xFACTOR@START+LENGTH, e.g. x10@5s+2s)");
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let rest = p.strip_prefix('x').or_else(|| p.strip_prefix('×')).ok_or_else(|| bad(p, "must start with x"))?;
        let (factor, rest) = rest.split_once('@').ok_or_else(|| bad(p, "missing @START"))?;
        let (start, len) = rest.split_once('+').ok_or_else(|| bad(p, "missing +LENGTH"))?;
        let factor: f64 = factor.parse().map_err(|_| bad(p, "factor is not a number"))?;
        if !(factor.is_finite() && factor >= 0.0) {
            return Err(bad(p, "factor must be 0 or more"));
        }
        let start = duration(start).map_err(|e| bad(p, &e))?;
        let len = duration(len).map_err(|e| bad(p, &e))?;
        out.push(Burst { factor, start, len });
    }
    Ok(Bursts(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_weights_and_defaults() {
        let m = parse_mix("😀=5, 😂=3,👍").unwrap();
        assert_eq!(m.0, vec![("😀".into(), 5.0), ("😂".into(), 3.0), ("👍".into(), 1.0)]);
        assert!(parse_mix("😀=lots").unwrap_err().contains("not a number"));
        assert!(parse_mix("😀=0").is_err());
    }

    #[test]
    fn bursts_parse_and_apply() {
        let b = parse_bursts("x10@5s+2s,x3@6s+10s").unwrap();
        assert_eq!(b.0[0], Burst { factor: 10.0, start: Duration::from_secs(5), len: Duration::from_secs(2) });
        assert_eq!(b.factor_at(Duration::from_secs(1)), 1.0);
        assert_eq!(b.factor_at(Duration::from_millis(5500)), 10.0);
        assert_eq!(b.factor_at(Duration::from_millis(6500)), 30.0);
        assert_eq!(b.factor_at(Duration::from_secs(7)), 3.0);
        assert!(parse_bursts("10@5s+2s").unwrap_err().contains("x10@5s+2s"));
        assert!(parse_bursts("x10@5s").is_err());
    }
}
