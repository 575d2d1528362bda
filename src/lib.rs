//! EmoStream: a live audience's emoji reactions, counted every window and pushed back to every viewer
//! as a small "swarm".
//!
//! # Layout
//! - [`core`]: the pure logic — events and their validation, the emoji set, tumbling windows, scale
//!   rules, the swarm message and the record encodings. No I/O, no clock.
//! - [`log`]: the log trait every stage reads and writes, with an in-process implementation (the
//!   embedded default) and an Apache Kafka one (`kafka` feature).
//! - [`stages`]: ingest, aggregate, publish, cluster, subscriber, registry and history, each an async
//!   function over the log.
//! - [`http`]: the ingest API, the subscription and delivery API (SSE, WebSocket), the dashboard.
//! - [`pipeline`]: the wiring layer — which stages run in a process, each wired once (`spawn`),
//!   composed into `emostream up` and into each stage process (`emostream ingest`, `aggregate`,
//!   `publish`, `cluster`, `subscriber`, `registry`), under a supervisor with ordered shutdown.
//! - [`cli`]: the command line (flags, `EMOSTREAM_*` variables, `--config` TOML), converted into
//!   configuration once; nothing below it knows clap.
//! - [`client`]: `emostream client`, the interactive viewer and sender.
//! - [`load`]: `emostream load`, a simulated audience with exact verification and latency figures.
//! - [`sys`]: process limits and `/proc` figures (open files, RSS, CPU time).
//! - [`telemetry`]: metric names and logging setup.

/// `println!` that never panics: a closed stdout (`emostream up | head -1`, a log collector gone)
/// loses the line instead of taking the process down. `println!` panics on EPIPE, since Rust
/// ignores SIGPIPE; restoring SIGPIPE would kill a server whose stdout closed.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub mod cli;
pub mod client;
pub mod core;
pub mod http;
pub mod load;
pub mod log;
pub mod pipeline;
pub mod stages;
pub mod sys;
pub mod telemetry;
