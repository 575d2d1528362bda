//! The wiring layer: which stages run in a process, wired to a log, under one supervisor. It takes
//! configuration types (the stages' own), never command-line types: [`crate::cli`] converts flags
//! into these once.
//!
//! - [`supervisor`]: named tasks, any failure stops the rest, ordered shutdown, readiness.
//! - [`spawn`]: one function per stage adding its tasks to a supervisor; the only place a stage is
//!   wired.
//! - [`up`]: `emostream up`, every stage in one process, composed from [`spawn`].
//! - [`process`]: each stage as its own process over Kafka (`emostream ingest`, `aggregate`, …),
//!   composed from [`spawn`] too.

pub mod process;
pub mod spawn;
pub mod supervisor;
pub mod up;

pub use process::{KafkaSettings, RegistryStage, Started, SubscriberStage, connect};
pub use spawn::{IngestStage, ensure_topics};
pub use supervisor::{PipelineError, Supervisor, shutdown_signal};
pub use up::{Running, UpConfig};
