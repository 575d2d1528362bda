//! The pure core: events, emoji set, windows, scale rules, swarm messages and record encodings.
//! Nothing here does I/O or reads a clock, so every rule is unit- and property-tested directly.

pub mod emoji;
pub mod emotion;
pub mod event;
pub mod record;
pub mod scale;
pub mod sse;
pub mod swarm;
pub mod window;
