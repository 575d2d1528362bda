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

use crate::core::emoji::EmojiSet;
use crate::core::emotion::{EmotionMap, EmotionMapError, TrendConfig};
use crate::core::scale::ScaleRule;
use crate::http::ingest::IngestLimits;
use crate::stages::ingest::AckMode;
use crate::topology::UpConfig;

#[derive(Debug, Parser)]
#[command(name = "emostream", version, about = "Live emoji reactions from a crowd, counted every window and pushed to every viewer")]
pub struct Cli {
    /// TOML file with flag values (keys are flag names); flags and EMOSTREAM_* variables override it.
    #[arg(long, global = true, env = "EMOSTREAM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline in this process (ingest, aggregate, publish, clusters, subscribers, API).
    Up(UpArgs),
    /// Watch the swarm and send emojis: the original interactive client.
    Client(crate::client::ClientArgs),
    /// Simulate an audience against a running pipeline: verify every window and count, measure latency.
    Load(crate::load::LoadArgs),
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

fn parse_emojis(s: &str) -> Result<EmojiSet, String> {
    EmojiSet::parse_list(s).map_err(|e| e.to_string())
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

/// Flags of `emostream up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Address of the ingest API (POST /emoji, POST /emojis).
    #[arg(long, env = "EMOSTREAM_INGEST_ADDR", default_value = "127.0.0.1:5001")]
    pub ingest_addr: SocketAddr,

    /// Address of the subscription and delivery API and the dashboard.
    #[arg(long, env = "EMOSTREAM_API_ADDR", default_value = "127.0.0.1:5002")]
    pub api_addr: SocketAddr,

    /// Number of clusters (cluster publishers).
    #[arg(long, env = "EMOSTREAM_CLUSTERS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub clusters: u32,

    /// Subscribers per cluster.
    #[arg(long, env = "EMOSTREAM_SUBSCRIBERS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub subscribers: u32,

    /// Window length (e.g. 500ms, 1s, 2s); windows align to multiples of it since the epoch.
    #[arg(long, env = "EMOSTREAM_WINDOW", default_value = "2s", value_parser = parse_window)]
    pub window: Duration,

    /// How long a window stays open after its end for events still on their way; later ones count in
    /// the next window.
    #[arg(long, env = "EMOSTREAM_GRACE", default_value = "250ms", value_parser = parse_duration)]
    pub grace: Duration,

    /// Scale rule: normalize:N (the original: factor = total/N), per:K (one per K sent) or top:N.
    #[arg(long, env = "EMOSTREAM_SCALE", default_value = "normalize:4", value_parser = parse_scale)]
    pub scale: ScaleRule,

    /// Accepted emojis, comma-separated (❤ and ❤️ are one emoji).
    #[arg(long, env = "EMOSTREAM_EMOJIS", default_value_t = EmojiSet::default(), value_parser = parse_emojis)]
    pub emojis: EmojiSet,

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

    /// Windows kept for GET /windows.
    #[arg(long, env = "EMOSTREAM_HISTORY", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub history: u64,

    /// Partitions of emoji_topic (aggregation parallelism).
    #[arg(long, env = "EMOSTREAM_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: u32,

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
    /// When the `--emotions` file cannot be used.
    pub fn to_config(&self) -> Result<UpConfig, EmotionMapError> {
        let emotions = match &self.emotions {
            Some(path) => EmotionMap::from_toml_file(path)?,
            None => EmotionMap::default(),
        };
        Ok(UpConfig {
            ingest_addr: self.ingest_addr,
            api_addr: self.api_addr,
            clusters: self.clusters,
            subscribers: self.subscribers,
            window: self.window,
            grace: self.grace,
            scale: self.scale,
            emojis: self.emojis.clone(),
            linger: self.linger,
            batch: self.batch,
            buffer: self.buffer,
            ack: self.ack,
            limits: IngestLimits { max_body: self.max_body, max_batch_body: self.max_batch_body },
            history: usize::try_from(self.history).unwrap_or(usize::MAX),
            partitions: self.partitions,
            emotions: std::sync::Arc::new(emotions),
            trend: TrendConfig {
                alpha: self.trend_alpha,
                surge_factor: self.surge_factor,
                surge_min: self.surge_min,
                ..TrendConfig::default()
            },
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
/// [`ConfigError`] when the file cannot be used; clap's own errors exit the process with usage help.
pub fn parse_from<I, T>(args: I) -> Result<Cli, ConfigError>
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
        assert_eq!(u.ingest_addr.to_string(), "127.0.0.1:5001");
        assert_eq!(u.api_addr.to_string(), "127.0.0.1:5002");
        assert_eq!((u.clusters, u.subscribers), (3, 3));
        assert_eq!(u.window, Duration::from_secs(2));
        assert_eq!(u.scale, ScaleRule::Normalize(4));
        assert_eq!(u.max_body, 64 * 1024);
        assert_eq!(u.max_batch_body, 4 * 1024 * 1024);
    }

    #[test]
    fn windows_in_every_form() {
        assert_eq!(up(&["--window", "500ms"]).window, Duration::from_millis(500));
        assert_eq!(up(&["--window", "1s"]).window, Duration::from_secs(1));
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
        assert_eq!(u.window, Duration::from_secs(1));
        assert_eq!(u.clusters, 5, "the flag wins over the file");
        assert_eq!(u.scale, ScaleRule::Per(10));
        assert_eq!(u.emojis.len(), 2);
        std::fs::write(&f, "windw = \"1s\"\n").unwrap();
        let e = parse_from(["emostream", "up", "--config", p]).unwrap_err().to_string();
        assert!(e.contains("unknown key `windw`"), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
    }
}
