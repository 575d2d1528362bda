//! Flag groups shared by several commands, each with its conversion into the configuration it
//! sets (`to_config`, `limits`, `spec` …). A new setting of a stage is a field here, its line in
//! the conversion, and its use in the stage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::parse::*;
use crate::core::emoji::{EmojiSet, SkinTones};
use crate::core::emotion::{EmotionMap, EmotionMapError, TrendConfig};
use crate::core::scale::ScaleRule;
use crate::core::window::WindowSpec;
use crate::http::ServeLimits;
use crate::http::ingest::IngestLimits;
use crate::pipeline::{IngestStage, KafkaSettings};
use crate::stages::ingest::{AckMode, IngestConfig};
use crate::stages::publish::PublishConfig;

/// Where a stage finds Apache Kafka.
#[derive(Debug, Clone, Args)]
pub struct KafkaFlags {
    /// Apache Kafka bootstrap brokers, host:port[,host:port]. Required by the distributed stages;
    /// with `up`, runs the whole pipeline over Kafka instead of in memory.
    #[arg(long, env = "EMOSTREAM_KAFKA", value_name = "HOST:PORT[,HOST:PORT]", value_parser = parse_brokers)]
    pub kafka: Option<String>,

    /// Prefix of every topic, consumer group and transactional id, so several pipelines can share
    /// one Kafka ("" = none).
    #[arg(long, env = "EMOSTREAM_NAMESPACE", default_value = "")]
    pub namespace: String,

    /// Replication factor of the topics this process creates.
    #[arg(long, env = "EMOSTREAM_REPLICATION", default_value_t = 1, value_parser = clap::value_parser!(i16).range(1..))]
    pub replication: i16,

    /// How long to wait for Kafka at start before giving up with an error.
    #[arg(long, env = "EMOSTREAM_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

impl KafkaFlags {
    /// Where Kafka is; `None` without `--kafka` (`up` then runs in memory).
    pub fn to_settings(&self) -> Option<KafkaSettings> {
        let brokers = self.kafka.clone()?;
        Some(KafkaSettings {
            brokers,
            namespace: self.namespace.clone(),
            replication: self.replication,
            connect_timeout: self.connect_timeout,
        })
    }

    /// Where Kafka is, for a stage that cannot run without it (`--kafka` was checked at parse time).
    ///
    /// # Errors
    /// When `--kafka` is missing.
    pub fn required(&self) -> anyhow::Result<KafkaSettings> {
        self.to_settings().ok_or_else(|| anyhow::anyhow!("--kafka HOST:PORT is required"))
    }
}

/// A stage's stable identity in Kafka.
#[derive(Debug, Clone, Args)]
pub struct InstanceFlag {
    /// Stable identity of this process across restarts (Kafka): its static consumer-group membership
    /// (group.instance.id) and its transactional id. Restarted with the same id, a process gets its
    /// partitions back and fences its predecessor's open transaction at once, instead of waiting for
    /// the session and transaction timeouts. Two live processes must not share one: the newer fences
    /// the older, which stops and says so. Default: from the stage and its ids (`aggregate-N` with
    /// `--id N`, `publish`, `cluster-N`; `up` for `up --kafka`); an aggregate without `--id` is a
    /// dynamic member.
    #[arg(long, env = "EMOSTREAM_INSTANCE_ID", value_name = "ID", value_parser = parse_instance_id)]
    pub instance_id: Option<String>,
}


/// Flags of the ingest API and its batching.
#[derive(Debug, Clone, Args)]
pub struct IngestFlags {
    /// Address of the ingest API (POST /emoji, POST /emojis).
    #[arg(long, env = "EMOSTREAM_INGEST_ADDR", default_value = "127.0.0.1:5001")]
    pub ingest_addr: SocketAddr,

    /// Accepted emojis, comma-separated (❤ and ❤️ are one emoji).
    #[arg(long, env = "EMOSTREAM_EMOJIS", default_value_t = EmojiSet::default(), value_parser = parse_emojis)]
    pub emojis: EmojiSet,

    /// Skin-tone variants (👍🏽, 👏🏿): `fold` counts each as its base emoji, `keep` makes each tone its
    /// own emoji (accepted only when --emojis lists it).
    #[arg(long, env = "EMOSTREAM_SKIN_TONES", default_value_t = SkinTones::Fold)]
    pub skin_tones: SkinTones,

    /// When ingest answers 200: fast (once buffered in memory) or durable (once the log has it).
    #[arg(long, env = "EMOSTREAM_ACK", value_enum, default_value_t = AckMode::Fast)]
    pub ack: AckMode,

    /// Ingest appends to the log at least this often.
    #[arg(long, env = "EMOSTREAM_LINGER", default_value = "10ms", value_parser = parse_duration)]
    pub linger: Duration,

    /// Ingest appends to the log once this many events are buffered.
    #[arg(long, env = "EMOSTREAM_BATCH", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,

    /// Most events acknowledged but not yet in the log; beyond it ingest answers 503.
    #[arg(long, env = "EMOSTREAM_BUFFER", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub buffer: u64,

    /// Body limit of POST /emoji (e.g. 64KiB).
    #[arg(long, env = "EMOSTREAM_MAX_BODY", default_value = "64KiB", value_parser = parse_size)]
    pub max_body: usize,

    /// Body limit of POST /emojis (e.g. 4MiB); a batch also holds at most 10 000 events.
    #[arg(long, env = "EMOSTREAM_MAX_BATCH_BODY", default_value = "4MiB", value_parser = parse_size)]
    pub max_batch_body: usize,
}

impl IngestFlags {
    /// The ingest stage's configuration: its API, its batching into `partitions` partitions of
    /// `emoji_topic`, and `serve`, the limits of its listener.
    ///
    /// # Errors
    /// When `--skin-tones fold` makes two of `--emojis` one (`👍` and `👍🏽`).
    pub fn to_config(&self, partitions: u32, serve: ServeLimits) -> anyhow::Result<IngestStage> {
        let emojis = self
            .emojis
            .skin_tones(self.skin_tones)
            .map_err(|e| anyhow::anyhow!("--emojis with --skin-tones {}: {e}", self.skin_tones))?;
        Ok(IngestStage {
            addr: self.ingest_addr,
            emojis,
            config: IngestConfig { linger: self.linger, batch: self.batch, buffer: self.buffer, ack: self.ack, partitions },
            limits: IngestLimits { max_body: self.max_body, max_batch_body: self.max_batch_body },
            serve,
        })
    }
}

/// How a process that serves HTTP shuts down.
#[derive(Debug, Clone, Args)]
pub struct DrainFlag {
    /// After SIGTERM or Ctrl-C, answer /readyz with 503 and keep serving this long before stopping
    /// (give a load balancer time to move traffic away; e.g. 5s behind one, 0s alone).
    #[arg(long, env = "EMOSTREAM_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,
}

/// Limits of every HTTP listener, so that no client can hold more than its share of memory or sockets.
#[derive(Debug, Clone, Args)]
pub struct ServeFlags {
    /// A request body that brings nothing for this long is answered 408 and its connection closed.
    #[arg(long, env = "EMOSTREAM_BODY_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub body_timeout: Duration,

    /// A connection whose socket accepts nothing for this long is closed: a viewer that stopped
    /// reading its stream, a client that never reads its answers.
    #[arg(long, env = "EMOSTREAM_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub write_timeout: Duration,

    /// Most open connections per listener; past it a new connection is answered 503 with Retry-After
    /// and closed [default: from the open-files limit, about half of it per listener].
    #[arg(long, env = "EMOSTREAM_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: Option<u64>,
}

impl ServeFlags {
    pub fn limits(&self) -> ServeLimits {
        ServeLimits {
            body_timeout: self.body_timeout,
            write_timeout: self.write_timeout,
            max_connections: self.max_connections.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        }
    }
}


/// The window length, shared by aggregate and publish (they must agree).
#[derive(Debug, Clone, Args)]
pub struct WindowFlag {
    /// Window length (e.g. 500ms, 1s, 2s); windows align to multiples of it since the epoch.
    #[arg(long, env = "EMOSTREAM_WINDOW", default_value = "2s", value_parser = parse_window)]
    pub window: Duration,
}

impl WindowFlag {
    pub fn spec(&self) -> WindowSpec {
        WindowSpec::new(i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX))
    }
}

/// How late events may be.
#[derive(Debug, Clone, Args)]
pub struct GraceFlag {
    /// How long a window stays open after its end for events still on their way; later ones count in
    /// the next window.
    #[arg(long, env = "EMOSTREAM_GRACE", default_value = "250ms", value_parser = parse_duration)]
    pub grace: Duration,
}

/// What the publisher puts in each swarm.
#[derive(Debug, Clone, Args)]
pub struct PublishFlags {
    /// Scale rule: normalize:N (the original: factor = total/N), per:K (one per K sent) or top:N.
    #[arg(long, env = "EMOSTREAM_SCALE", default_value = "normalize:4", value_parser = parse_scale)]
    pub scale: ScaleRule,

    /// TOML file mapping emojis to emotions and valences, replacing the built-in map
    /// ([emojis] "😂" = { emotion = "laughter", valence = 0.9 }).
    #[arg(long, env = "EMOSTREAM_EMOTIONS", value_name = "FILE")]
    pub emotions: Option<PathBuf>,

    /// A surge is an emotion counted at least this many times its moving average in a window…
    #[arg(long, env = "EMOSTREAM_SURGE_FACTOR", default_value_t = 3.0, value_parser = parse_positive_f64)]
    pub surge_factor: f64,

    /// …and at least this many times.
    #[arg(long, env = "EMOSTREAM_SURGE_MIN", default_value_t = 20)]
    pub surge_min: u64,

    /// Weight of the newest window in each emotion's moving average (the trend), in (0, 1].
    #[arg(long, env = "EMOSTREAM_TREND_ALPHA", default_value_t = 0.3, value_parser = parse_alpha)]
    pub trend_alpha: f64,
}

impl PublishFlags {
    /// The emotion map (`--emotions` or the built-in one).
    ///
    /// # Errors
    /// When the `--emotions` file cannot be used.
    fn emotion_map(&self) -> Result<EmotionMap, EmotionMapError> {
        match &self.emotions {
            Some(path) => EmotionMap::from_toml_file(path),
            None => Ok(EmotionMap::default()),
        }
    }

    fn trend(&self) -> TrendConfig {
        TrendConfig { alpha: self.trend_alpha, surge_factor: self.surge_factor, surge_min: self.surge_min, ..TrendConfig::default() }
    }

    /// The publisher's configuration, for windows of `window`.
    ///
    /// # Errors
    /// When the `--emotions` file cannot be used.
    pub fn to_config(&self, window: &WindowFlag, instance_id: Option<String>) -> Result<PublishConfig, EmotionMapError> {
        Ok(PublishConfig {
            window: window.spec(),
            scale: self.scale,
            emotions: Arc::new(self.emotion_map()?),
            trend: self.trend(),
            instance_id,
        })
    }
}

/// The shape of the topology: clusters and subscribers per cluster.
#[derive(Debug, Clone, Args)]
pub struct TopologyFlags {
    /// Number of clusters (cluster publishers).
    #[arg(long, env = "EMOSTREAM_CLUSTERS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub clusters: u32,

    /// Subscribers per cluster.
    #[arg(long, env = "EMOSTREAM_SUBSCRIBERS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub subscribers: u32,
}

/// Where a stage without an HTTP API of its own serves its metrics.
#[derive(Debug, Clone, Args)]
pub struct MetricsFlag {
    /// Serve GET /metrics (Prometheus text) and GET /healthz at this address (off when not given).
    #[arg(long, env = "EMOSTREAM_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
}

/// Partitions of `emoji_topic`.
#[derive(Debug, Clone, Args)]
pub struct PartitionsFlag {
    /// Partitions of emoji_topic (aggregation parallelism: at most one aggregator per partition), used
    /// when this process creates it.
    #[arg(long, env = "EMOSTREAM_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: u32,
}

/// Windows kept.
#[derive(Debug, Clone, Args)]
pub struct HistoryFlag {
    /// Windows kept for GET /windows and for reconnecting clients to catch up on (Last-Event-ID).
    #[arg(long, env = "EMOSTREAM_HISTORY", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub history: u64,
}

impl HistoryFlag {
    pub fn windows(&self) -> usize {
        usize::try_from(self.history).unwrap_or(usize::MAX)
    }
}
