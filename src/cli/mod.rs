//! The command line: subcommands, their flags, and where flag values come from.
//!
//! Precedence, highest first: a flag on the command line, its `EMOSTREAM_*` environment variable, the
//! TOML file given with `--config` (keys are flag names, `ingest-addr` or `ingest_addr`), the default.

//!
//! This is the edge of the library: it converts flags into the configuration types of
//! [`crate::pipeline`], [`crate::client`] and [`crate::load`] once, and nothing below it knows clap.
//!
//! - [`parse`]: value parsers, one per kind of flag value.
//! - [`values`]: how the library's enums are spelled on the command line.
//! - [`flags`]: flag groups shared by several commands, with their conversions.
//! - [`commands`]: the flags of `up` and of each stage process.
//! - [`client`], [`load`]: the flags of `emostream client` and `emostream load`.
//! - [`config_file`]: the `--config` file.

mod client;
mod commands;
mod config_file;
mod flags;
mod load;
mod parse;
mod values;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use client::ClientArgs;
pub use commands::{AggregateArgs, ClusterArgs, IngestArgs, PublishArgs, RegistryArgs, SubscriberArgs, UpArgs};
pub use config_file::ConfigError;
pub use flags::*;
pub use load::LoadArgs;

use crate::pipeline::{process, up};

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
    Client(ClientArgs),
    /// Simulate an audience against a running pipeline: verify every window and count, measure latency.
    Load(LoadArgs),
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
        let kafka = |k: &KafkaFlags| k.kafka.is_none().then_some(KAFKA);
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
    let cli = config_file::parse_with_config(args)?;
    match cli.command.missing() {
        Some((flag, what)) => Err(ConfigError::Missing { command: cli.command.name(), flag, what }),
        None => Ok(cli),
    }
}


/// Runs `command` to its end: converts its flags into configuration and calls its library entry
/// point.
///
/// # Errors
/// A flag value that cannot be used, or whatever stopped the command (the message says what to do).
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(a) => up::run(a.to_config()?, a.kafka.to_settings()).await,
        Command::Ingest(a) => process::run_ingest(a.kafka.required()?, a.to_config()?).await,
        Command::Aggregate(a) => {
            process::run_aggregate(a.kafka.required()?, a.to_config(), a.partitions.partitions, a.metrics.metrics_addr).await
        }
        Command::Publish(a) => {
            process::run_publish(a.kafka.required()?, a.to_config()?, a.partitions.partitions, a.metrics.metrics_addr).await
        }
        Command::Cluster(a) => {
            process::run_cluster(a.kafka.required()?, a.to_config()?, a.partitions.partitions, a.metrics.metrics_addr).await
        }
        Command::Subscriber(a) => process::run_subscriber(a.kafka.required()?, a.to_config()?).await,
        Command::Registry(a) => process::run_registry(a.kafka.required()?, a.to_config()).await,
        Command::Client(a) => crate::client::run(a.to_config()).await,
        Command::Load(a) => crate::load::run(a.to_config()).await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse::*;
    use super::*;
    use crate::core::scale::ScaleRule;
    use crate::http::ServeLimits;

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
