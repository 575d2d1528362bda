//! How the library's enums are spelled on the command line. The enums live with the code that uses
//! them, which knows nothing of clap; their names and `--help` lines are given here.

use clap::ValueEnum;
use clap::builder::PossibleValue;

use crate::client::Transport;
use crate::load::LoadTransport;
use crate::stages::ingest::AckMode;
use crate::telemetry::LogFormat;

/// `impl ValueEnum for $type`, each variant with its name and optional help line.
macro_rules! spelled {
    ($ty:ty { $($variant:path => $name:literal $(: $help:literal)?),* $(,)? }) => {
        impl ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($variant),*]
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(match self {
                    $($variant => PossibleValue::new($name)$(.help($help))?,)*
                })
            }
        }
    };
}

spelled!(AckMode {
    AckMode::Fast => "fast": "Once the event is in the bounded in-memory buffer (like the originals)",
    AckMode::Durable => "durable": "Once the log has the event (Kafka: acks=all, idempotent producer)",
});

spelled!(LogFormat {
    LogFormat::Text => "text": "Human-readable lines (coloured at a terminal)",
    LogFormat::Json => "json": "One JSON object per line",
});

spelled!(Transport {
    Transport::Sse => "sse",
    Transport::Ws => "ws",
});

spelled!(LoadTransport {
    LoadTransport::Sse => "sse": "Server-Sent Events (`GET /stream/{id}`)",
    LoadTransport::Ws => "ws": "WebSocket (`GET /ws/{id}`)",
    LoadTransport::Mixed => "mixed": "Every other viewer on each",
});
