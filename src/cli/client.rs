//! The flags of `emostream client`.

use std::time::Duration;

use super::parse::parse_duration;
use crate::client::{ClientConfig, Transport};

/// Flags of `emostream client`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Subscription API base URL.
    #[arg(long, env = "EMOSTREAM_API", default_value = "http://127.0.0.1:5002")]
    pub api: String,
    /// Ingest API base URL.
    #[arg(long, env = "EMOSTREAM_INGEST", default_value = "http://127.0.0.1:5001")]
    pub ingest: String,
    /// Your client id (asked for when stdin is a terminal; otherwise random).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Cluster to join (1-based); with --subscriber. Omit both to be placed on the least loaded one.
    #[arg(long)]
    pub cluster: Option<u32>,
    /// Subscriber within the cluster (1-based).
    #[arg(long)]
    pub subscriber: Option<u32>,
    /// Emojis sent per second (0 only watches).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Emojis to send, comma-separated, picked at random.
    #[arg(long)]
    pub emojis: Option<String>,
    /// Stop after this long (e.g. 30s); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How windows arrive.
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
}

impl ClientArgs {
    pub fn to_config(self) -> ClientConfig {
        ClientConfig {
            api: self.api,
            ingest: self.ingest,
            client_id: self.client_id,
            cluster: self.cluster,
            subscriber: self.subscriber,
            rate: self.rate,
            emojis: self.emojis,
            duration: self.duration,
            transport: self.transport,
        }
    }
}
