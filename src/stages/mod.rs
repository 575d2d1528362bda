//! The pipeline's stages, each an async function over the log: ingest → aggregate → publish →
//! cluster N → subscriber N.M, beside the registry and the window history.

pub mod aggregate;
pub mod cluster;
pub mod history;
pub mod ingest;
pub mod publish;
pub mod registry;
pub mod subscriber;

/// Wall-clock time in ms since the epoch: the one place stages read the clock.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
