//! The command line: subcommands, their flags, and where flag values come from.
//!
//! Precedence, highest first: a flag on the command line, its `EMOSTREAM_*` environment variable, the
//! TOML file given with `--config` (keys are flag names, `ingest-addr` or `ingest_addr`), the default.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::core::emoji::{EmojiSet, SkinTones};
use crate::core::emotion::{EmotionMap, EmotionMapError, TrendConfig};
use crate::core::scale::ScaleRule;
use crate::http::ServeLimits;
use crate::http::ingest::IngestLimits;
use crate::stages::ingest::AckMode;
use crate::topology::UpConfig;

#[derive(Debug, Parser)]
#[command(name = "emostream", version, about = "Live emoji reactions from a crowd, counted every window and pushed to every viewer")]
pub struct Cli {
    /// TOML file with flag values (keys are flag names); flags and EMOSTREAM_* variables override it.
    #[arg(long, global = true, env = "EMOSTREAM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log lines on stderr: text (coloured only at a terminal) or json (one object per line).
    #[arg(long, global = true, env = "EMOSTREAM_LOG_FORMAT", value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline in this process (ingest, aggregate, publish, clusters, subscribers, API),
    /// over an in-process log or, with --kafka, over Apache Kafka.
    Up(UpArgs),
    /// Distributed: the ingest API (POST /emoji, POST /emojis), appending to Kafka's emoji_topic.
    Ingest(IngestArgs),
    /// Distributed: count emoji_topic into windows; run several, each owns some of its partitions.
    Aggregate(AggregateArgs),
    /// Distributed: the main publisher, merging every partition's partials into one swarm per window.
    Publish(PublishArgs),
    /// Distributed: cluster publisher N, forwarding main_topic to clusterN.
    Cluster(ClusterArgs),
    /// Distributed: subscriber M of cluster N, serving its clients' SSE and WebSocket streams.
    Subscriber(SubscriberArgs),
    /// Distributed: the subscription API (POST /subscribe, /unsubscribe, GET /subscriptions).
    Registry(RegistryArgs),
    /// Watch the swarm and send emojis: the original interactive client.
    Client(crate::client::ClientArgs),
    /// Simulate an audience against a running pipeline: verify every window and count, measure latency.
    Load(crate::load::LoadArgs),
}

impl Command {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Up(_) => "up",
            Command::Ingest(_) => "ingest",
            Command::Aggregate(_) => "aggregate",
            Command::Publish(_) => "publish",
            Command::Cluster(_) => "cluster",
            Command::Subscriber(_) => "subscriber",
            Command::Registry(_) => "registry",
            Command::Client(_) => "client",
            Command::Load(_) => "load",
        }
    }

    /// Flags a distributed stage cannot run without. They are optional to clap so that `--config`
    /// can give them too; checked once every source has been read.
    fn missing(&self) -> Option<(&'static str, &'static str)> {
        const KAFKA: (&str, &str) = (
            "--kafka",
            "HOST:PORT[,HOST:PORT] (or EMOSTREAM_KAFKA): the distributed stages run over Apache Kafka; for a local broker try `scripts/kafka start`",
        );
        let kafka = |k: &KafkaArgs| k.kafka.is_none().then_some(KAFKA);
        match self {
            Command::Ingest(a) => kafka(&a.kafka),
            Command::Aggregate(a) => kafka(&a.kafka),
            Command::Publish(a) => kafka(&a.kafka),
            Command::Cluster(a) => {
                a.id.is_none()
                    .then_some(("--id", "N (or EMOSTREAM_ID): which cluster this publisher forwards to"))
                    .or_else(|| kafka(&a.kafka))
            }
            Command::Subscriber(a) => a
                .cluster
                .is_none()
                .then_some(("--cluster", "N (or EMOSTREAM_CLUSTER): the cluster whose topic this subscriber follows"))
                .or_else(|| a.id.is_none().then_some(("--id", "M (or EMOSTREAM_ID): this subscriber's id within its cluster")))
                .or_else(|| kafka(&a.kafka)),
            Command::Registry(a) => kafka(&a.kafka),
            Command::Up(_) | Command::Client(_) | Command::Load(_) => None,
        }
    }
}

/// Parses a duration such as `500ms`, `2s` or `1m`.
///
/// # Errors
/// A message with an example when the value is not a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (write e.g. 500ms, 2s or 1m)"))
}

/// Parses a byte size such as `65536`, `64KiB` or `4MiB`.
///
/// # Errors
/// A message when the value is not a size.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: usize = n.parse().map_err(|_| format!("{s:?} is not a size (write e.g. 65536, 64KiB or 4MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("unknown unit in {s:?} (use B, KiB or MiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_scale(s: &str) -> Result<ScaleRule, String> {
    s.parse::<ScaleRule>().map_err(|e| e.to_string())
}

/// Kept as given: `--skin-tones` (which clap cannot show this parser) folds them afterwards, in
/// [`IngestFlags::emoji_set`].
fn parse_emojis(s: &str) -> Result<EmojiSet, String> {
    EmojiSet::parse_list_with(s, SkinTones::Keep).map_err(|e| e.to_string())
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err(format!("{s} is out of range: windows are 10ms to 1h"));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("{s} is not a whole number of milliseconds"));
    }
    Ok(d)
}

fn parse_brokers(s: &str) -> Result<String, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a list of Kafka brokers (write host:port, or host:port,host:port)");
    if s.is_empty() {
        return Err(bad());
    }
    for b in s.split(',') {
        let (host, port) = b.trim().rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad());
        }
    }
    Ok(s.to_string())
}

fn parse_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    if (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len() {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} must be an http:// or https:// URL, e.g. http://10.0.0.7:5101"))
    }
}

/// Where a stage finds Apache Kafka.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
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

/// Parses an instance id: 1-100 characters of letters, digits, `.`, `_` and `-`.
///
/// # Errors
/// A message naming the characters allowed.
pub fn parse_instance_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty() && s.len() <= 100 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} must be 1-100 characters of letters, digits, '.', '_' and '-', e.g. aggregate-2"))
    }
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
    /// Batching settings for `partitions` partitions of `emoji_topic`.
    pub fn ingest_config(&self, partitions: u32) -> crate::stages::ingest::IngestConfig {
        crate::stages::ingest::IngestConfig { linger: self.linger, batch: self.batch, buffer: self.buffer, ack: self.ack, partitions }
    }

    /// The accepted emojis, with skin tones folded or kept.
    ///
    /// # Errors
    /// When folding makes two of `--emojis` one (`👍` and `👍🏽`).
    pub fn emoji_set(&self) -> anyhow::Result<EmojiSet> {
        self.emojis.skin_tones(self.skin_tones).map_err(|e| anyhow::anyhow!("--emojis with --skin-tones {}: {e}", self.skin_tones))
    }

    pub fn limits(&self) -> IngestLimits {
        IngestLimits { max_body: self.max_body, max_batch_body: self.max_batch_body }
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

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s} must be longer than zero"));
    }
    Ok(d)
}

/// The window length, shared by aggregate and publish (they must agree).
#[derive(Debug, Clone, Args)]
pub struct WindowFlag {
    /// Window length (e.g. 500ms, 1s, 2s); windows align to multiples of it since the epoch.
    #[arg(long, env = "EMOSTREAM_WINDOW", default_value = "2s", value_parser = parse_window)]
    pub window: Duration,
}

impl WindowFlag {
    pub fn spec(&self) -> crate::core::window::WindowSpec {
        crate::core::window::WindowSpec::new(i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX))
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
    pub fn emotion_map(&self) -> Result<EmotionMap, EmotionMapError> {
        match &self.emotions {
            Some(path) => EmotionMap::from_toml_file(path),
            None => Ok(EmotionMap::default()),
        }
    }

    pub fn trend(&self) -> TrendConfig {
        TrendConfig { alpha: self.trend_alpha, surge_factor: self.surge_factor, surge_min: self.surge_min, ..TrendConfig::default() }
    }

    /// The publisher's configuration.
    ///
    /// # Errors
    /// When the `--emotions` file cannot be used.
    pub fn publish_config(&self, window: &WindowFlag) -> Result<crate::stages::publish::PublishConfig, EmotionMapError> {
        Ok(crate::stages::publish::PublishConfig {
            window: window.spec(),
            scale: self.scale,
            emotions: std::sync::Arc::new(self.emotion_map()?),
            trend: self.trend(),
            instance_id: None,
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

/// Flags of `emostream up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub ingest: IngestFlags,

    /// Address of the subscription and delivery API and the dashboard.
    #[arg(long, env = "EMOSTREAM_API_ADDR", default_value = "127.0.0.1:5002")]
    pub api_addr: SocketAddr,

    #[command(flatten)]
    pub serve: ServeFlags,

    #[command(flatten)]
    pub topology: TopologyFlags,

    #[command(flatten)]
    pub window: WindowFlag,

    #[command(flatten)]
    pub grace: GraceFlag,

    #[command(flatten)]
    pub publish: PublishFlags,

    #[command(flatten)]
    pub history: HistoryFlag,

    #[command(flatten)]
    pub partitions: PartitionsFlag,

    #[command(flatten)]
    pub instance: InstanceFlag,

    #[command(flatten)]
    pub drain: DrainFlag,

    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Flags of `emostream ingest`.
#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub ingest: IngestFlags,
    #[command(flatten)]
    pub serve: ServeFlags,
    #[command(flatten)]
    pub partitions: PartitionsFlag,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Flags of `emostream aggregate`.
#[derive(Debug, Clone, Args)]
pub struct AggregateArgs {
    /// This aggregator's number (1-based), for its default --instance-id `aggregate-N`. Without it
    /// (and without --instance-id) the aggregator is a dynamic group member: after a kill -9 and
    /// restart its partitions wait for the session timeout (6 s) and the transaction timeout (10 s).
    #[arg(long, env = "EMOSTREAM_ID", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=999))]
    pub id: Option<u32>,
    #[command(flatten)]
    pub instance: InstanceFlag,
    #[command(flatten)]
    pub window: WindowFlag,
    #[command(flatten)]
    pub grace: GraceFlag,
    #[command(flatten)]
    pub partitions: PartitionsFlag,
    #[command(flatten)]
    pub metrics: MetricsFlag,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Flags of `emostream publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub instance: InstanceFlag,
    #[command(flatten)]
    pub window: WindowFlag,
    #[command(flatten)]
    pub publish: PublishFlags,
    #[command(flatten)]
    pub partitions: PartitionsFlag,
    #[command(flatten)]
    pub metrics: MetricsFlag,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Flags of `emostream cluster`.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Which cluster (1-based): forwards main_topic to clusterN. Required.
    #[arg(long, env = "EMOSTREAM_ID", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=99))]
    pub id: Option<u32>,
    #[command(flatten)]
    pub instance: InstanceFlag,
    #[command(flatten)]
    pub partitions: PartitionsFlag,
    #[command(flatten)]
    pub metrics: MetricsFlag,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Flags of `emostream subscriber`.
#[derive(Debug, Clone, Args)]
pub struct SubscriberArgs {
    /// The cluster whose topic this subscriber follows (1-based). Required.
    #[arg(long, env = "EMOSTREAM_CLUSTER", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=99))]
    pub cluster: Option<u32>,

    /// This subscriber's id within its cluster (1-based). Required.
    #[arg(long, env = "EMOSTREAM_ID", value_name = "M", value_parser = clap::value_parser!(u32).range(1..=99))]
    pub id: Option<u32>,

    /// Address of this subscriber's stream API (GET /stream/{id}, GET /ws/{id}) [default:
    /// 127.0.0.1:(5000 + 100 × cluster + id), e.g. 127.0.0.1:5101 for subscriber 1.1].
    #[arg(long, env = "EMOSTREAM_API_ADDR")]
    pub api_addr: Option<SocketAddr>,

    /// Base URL clients are told to connect to, as they reach this machine [default: http:// and the
    /// --api-addr, with this machine's host name when it listens on 0.0.0.0].
    #[arg(long, env = "EMOSTREAM_ADVERTISE", value_name = "URL", value_parser = parse_url)]
    pub advertise: Option<String>,

    #[command(flatten)]
    pub serve: ServeFlags,
    #[command(flatten)]
    pub history: HistoryFlag,
    #[command(flatten)]
    pub partitions: PartitionsFlag,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl SubscriberArgs {
    /// `--api-addr`, or the default port of this subscriber: 5000 + 100 × cluster + id.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr.unwrap_or_else(|| {
            let port = 5000 + 100 * self.cluster.unwrap_or(0) + self.id.unwrap_or(0);
            SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).unwrap_or(0)))
        })
    }
}

/// Flags of `emostream registry`.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Address of the subscription API (POST /subscribe, POST /unsubscribe, GET /subscriptions).
    #[arg(long, env = "EMOSTREAM_API_ADDR", default_value = "127.0.0.1:5002")]
    pub api_addr: SocketAddr,
    #[command(flatten)]
    pub serve: ServeFlags,
    #[command(flatten)]
    pub topology: TopologyFlags,
    #[command(flatten)]
    pub history: HistoryFlag,
    #[command(flatten)]
    pub partitions: PartitionsFlag,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

fn parse_positive_f64(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{s:?} must be a positive number")),
    }
}

fn parse_alpha(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("{s:?} must be a number in (0, 1]")),
    }
}

impl UpArgs {
    /// The pipeline's configuration.
    ///
    /// # Errors
    /// When the `--emotions` file cannot be used, or `--skin-tones fold` makes two of `--emojis` one.
    pub fn to_config(&self) -> anyhow::Result<UpConfig> {
        let i = &self.ingest;
        Ok(UpConfig {
            drain_delay: self.drain.drain_delay,
            ingest_addr: i.ingest_addr,
            api_addr: self.api_addr,
            clusters: self.topology.clusters,
            subscribers: self.topology.subscribers,
            window: self.window.window,
            grace: self.grace.grace,
            scale: self.publish.scale,
            emojis: i.emoji_set()?,
            linger: i.linger,
            batch: i.batch,
            buffer: i.buffer,
            ack: i.ack,
            limits: i.limits(),
            serve: self.serve.limits(),
            history: self.history.windows(),
            partitions: self.partitions.partitions,
            emotions: std::sync::Arc::new(self.publish.emotion_map()?),
            trend: self.publish.trend(),
            instance_id: Some(self.instance.instance_id.clone().unwrap_or_else(|| "up".to_owned())),
        })
    }
}

/// A `--config` file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read --config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("--config file {path} is not valid TOML: {source}")]
    Toml { path: PathBuf, source: Box<toml::de::Error> },
    #[error("--config file {path}: unknown key `{key}` for `emostream {command}` (keys are its flag names; see --help)")]
    UnknownKey { path: PathBuf, key: String, command: String },
    #[error("--config file {path}: key `{key}` must be a string, number, boolean or list")]
    BadValue { path: PathBuf, key: String },
    #[error("`emostream {command}` needs {flag} {what}")]
    Missing { command: &'static str, flag: &'static str, what: &'static str },
}

fn toml_to_arg(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(a) => a.iter().map(toml_to_arg).collect::<Option<Vec<_>>>().map(|v| v.join(",")),
        _ => None,
    }
}

/// Parses the command line, filling flags not given on it (nor in the environment) from `--config`.
///
/// # Errors
/// [`ConfigError`] when the file cannot be used or a required flag is given nowhere; clap's own
/// errors exit the process with usage help.
pub fn parse_from<I, T>(args: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = parse_with_config(args)?;
    match cli.command.missing() {
        Some((flag, what)) => Err(ConfigError::Missing { command: cli.command.name(), flag, what }),
        None => Ok(cli),
    }
}

fn parse_with_config<I, T>(args: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let matches = Cli::command().get_matches_from(args.clone());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Some(path) = cli.config.clone() else { return Ok(cli) };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigError::Toml { path: path.clone(), source: Box::new(source) })?;
    let Some((sub_name, sub_matches)) = matches.subcommand() else { return Ok(cli) };
    let command = Cli::command();
    let sub = command.find_subcommand(sub_name).expect("matched subcommand exists");
    let mut extra: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| ConfigError::UnknownKey { path: path.clone(), key: key.clone(), command: sub_name.to_string() })?;
        let from_default = matches!(sub_matches.value_source(arg.get_id().as_str()), None | Some(ValueSource::DefaultValue));
        if !from_default {
            continue;
        }
        let v = toml_to_arg(value).ok_or_else(|| ConfigError::BadValue { path: path.clone(), key: key.clone() })?;
        extra.push(format!("--{long}").into());
        extra.push(v.into());
    }
    if extra.is_empty() {
        return Ok(cli);
    }
    let mut all = args;
    all.extend(extra);
    let matches = Cli::command().get_matches_from(all);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(args: &[&str]) -> UpArgs {
        let mut all = vec!["emostream", "up"];
        all.extend_from_slice(args);
        match parse_from(all).unwrap().command {
            Command::Up(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let u = up(&[]);
        assert_eq!(u.ingest.ingest_addr.to_string(), "127.0.0.1:5001");
        assert_eq!(u.api_addr.to_string(), "127.0.0.1:5002");
        assert_eq!((u.topology.clusters, u.topology.subscribers), (3, 3));
        assert_eq!(u.window.window, Duration::from_secs(2));
        assert_eq!(u.publish.scale, ScaleRule::Normalize(4));
        assert_eq!(u.ingest.max_body, 64 * 1024);
        assert_eq!(u.ingest.max_batch_body, 4 * 1024 * 1024);
        assert_eq!(u.kafka.kafka, None, "embedded unless --kafka");
        assert_eq!(u.serve.limits(), ServeLimits::default(), "the flags' defaults are the library's");
    }

    #[test]
    fn serve_limits_parse() {
        let u = up(&["--body-timeout", "1s", "--write-timeout", "500ms", "--max-connections", "40"]);
        assert_eq!(
            u.serve.limits(),
            ServeLimits { body_timeout: Duration::from_secs(1), write_timeout: Duration::from_millis(500), max_connections: Some(40) }
        );
        assert!(parse_timeout("0s").is_err());
    }

    #[test]
    fn windows_in_every_form() {
        assert_eq!(up(&["--window", "500ms"]).window.window, Duration::from_millis(500));
        assert_eq!(up(&["--window", "1s"]).window.window, Duration::from_secs(1));
        assert!(parse_window("2 fortnights").is_err());
        assert!(parse_window("1ms").is_err());
    }

    #[test]
    fn config_file_fills_what_flags_do_not_give() {
        let dir = std::env::temp_dir().join(format!("emostream-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "window = \"1s\"\nclusters = 2\nscale = \"per:10\"\nemojis = [\"😀\", \"😂\"]\n").unwrap();
        let p = f.to_str().unwrap();
        let u = up(&["--config", p, "--clusters", "5"]);
        assert_eq!(u.window.window, Duration::from_secs(1));
        assert_eq!(u.topology.clusters, 5, "the flag wins over the file");
        assert_eq!(u.publish.scale, ScaleRule::Per(10));
        assert_eq!(u.ingest.emojis.len(), 2);
        std::fs::write(&f, "windw = \"1s\"\n").unwrap();
        let e = parse_from(["emostream", "up", "--config", p]).unwrap_err().to_string();
        assert!(e.contains("unknown key `windw`"), "{e}");
    }

    fn parse(args: &[&str]) -> Result<Command, ConfigError> {
        let mut all = vec!["emostream"];
        all.extend_from_slice(args);
        parse_from(all).map(|c| c.command)
    }

    #[test]
    fn distributed_stages_need_kafka_and_their_ids() {
        for cmd in ["ingest", "aggregate", "publish", "registry"] {
            let e = parse(&[cmd]).unwrap_err().to_string();
            assert!(e.contains("--kafka") && e.contains(&format!("emostream {cmd}")), "{e}");
        }
        assert!(parse(&["cluster", "--kafka", "k:9092"]).unwrap_err().to_string().contains("--id"));
        assert!(parse(&["subscriber", "--id", "1", "--kafka", "k:9092"]).unwrap_err().to_string().contains("--cluster"));
        assert!(parse(&["subscriber", "--cluster", "2", "--id", "3"]).unwrap_err().to_string().contains("--kafka"));
        let Command::Subscriber(s) = parse(&["subscriber", "--cluster", "2", "--id", "3", "--kafka", "a:1,b:2"]).unwrap() else { panic!() };
        assert_eq!(s.api_addr().to_string(), "127.0.0.1:5203", "a distinct default port per subscriber");
        assert_eq!(s.kafka.kafka.as_deref(), Some("a:1,b:2"));
        assert_eq!((s.history.history, s.partitions.partitions, s.kafka.namespace.as_str()), (1800, 6, ""));
        assert!(parse_brokers("localhost").is_err());
        assert!(parse_brokers("h:99999").is_err());
        assert!(parse_url("10.0.0.7:5101").is_err());
        assert_eq!(parse_url("http://10.0.0.7:5101/"), Ok("http://10.0.0.7:5101".into()));
    }

    #[test]
    fn a_config_file_can_give_the_required_flags() {
        let dir = std::env::temp_dir().join(format!("emostream-cli-req-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "kafka = \"k:9092\"\nid = 2\nnamespace = \"t1\"\n").unwrap();
        let Command::Cluster(c) = parse(&["cluster", "--config", f.to_str().unwrap()]).unwrap() else { panic!() };
        assert_eq!((c.id, c.kafka.kafka.as_deref(), c.kafka.namespace.as_str()), (Some(2), Some("k:9092"), "t1"));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
    }
}
