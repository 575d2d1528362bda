//! The flags of each pipeline command (`up` and the stage processes), and their conversion into the
//! configuration [`crate::pipeline`] takes.

use std::net::SocketAddr;

use clap::Args;

use super::flags::*;
use super::parse::parse_url;
use crate::pipeline::{IngestStage, RegistryStage, SubscriberStage, UpConfig};
use crate::stages::aggregate::AggregateConfig;
use crate::stages::cluster::ClusterConfig;
use crate::stages::publish::PublishConfig;

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
    pub kafka: KafkaFlags,
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
    pub kafka: KafkaFlags,
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
    pub kafka: KafkaFlags,
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
    pub kafka: KafkaFlags,
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
    pub kafka: KafkaFlags,
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
    pub kafka: KafkaFlags,
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
    pub kafka: KafkaFlags,
}


impl UpArgs {
    /// The pipeline's configuration.
    ///
    /// # Errors
    /// When the `--emotions` file cannot be used, or `--skin-tones fold` makes two of `--emojis` one.
    pub fn to_config(&self) -> anyhow::Result<UpConfig> {
        let base = self.instance.instance_id.clone().unwrap_or_else(|| "up".to_owned());
        let serve = self.serve.limits();
        Ok(UpConfig {
            ingest: self.ingest.to_config(self.partitions.partitions, serve)?,
            api_addr: self.api_addr,
            api_serve: serve,
            clusters: self.topology.clusters,
            subscribers: self.topology.subscribers,
            aggregate: AggregateConfig { window: self.window.spec(), grace: self.grace.grace, instance_id: Some(format!("{base}-aggregate")) },
            publish: self.publish.to_config(&self.window, Some(format!("{base}-publish")))?,
            history: self.history.windows(),
            instance_id: Some(base),
            drain_delay: self.drain.drain_delay,
        })
    }
}

impl IngestArgs {
    /// # Errors
    /// When `--skin-tones fold` makes two of `--emojis` one.
    pub fn to_config(&self) -> anyhow::Result<IngestStage> {
        self.ingest.to_config(self.partitions.partitions, self.serve.limits())
    }
}

impl AggregateArgs {
    /// Its instance id is `--instance-id`, else `aggregate-N` from `--id N`, else none (a dynamic
    /// group member).
    pub fn to_config(&self) -> AggregateConfig {
        let instance_id = self.instance.instance_id.clone().or_else(|| self.id.map(|n| format!("aggregate-{n}")));
        AggregateConfig { window: self.window.spec(), grace: self.grace.grace, instance_id }
    }
}

impl PublishArgs {
    /// Its instance id is `--instance-id`, else `publish`.
    ///
    /// # Errors
    /// When the `--emotions` file cannot be used.
    pub fn to_config(&self) -> anyhow::Result<PublishConfig> {
        let instance_id = self.instance.instance_id.clone().unwrap_or_else(|| "publish".to_owned());
        Ok(self.publish.to_config(&self.window, Some(instance_id))?)
    }
}

impl ClusterArgs {
    /// Its instance id is `--instance-id`, else `cluster-N`.
    ///
    /// # Errors
    /// When `--id` is missing.
    pub fn to_config(&self) -> anyhow::Result<ClusterConfig> {
        let id = self.id.ok_or_else(|| anyhow::anyhow!("--id is required"))?;
        let instance_id = self.instance.instance_id.clone().unwrap_or_else(|| format!("cluster-{id}"));
        Ok(ClusterConfig { id, instance_id: Some(instance_id) })
    }
}

impl SubscriberArgs {
    /// # Errors
    /// When `--cluster` or `--id` is missing.
    pub fn to_config(&self) -> anyhow::Result<SubscriberStage> {
        let cluster = self.cluster.ok_or_else(|| anyhow::anyhow!("--cluster is required"))?;
        let id = self.id.ok_or_else(|| anyhow::anyhow!("--id is required"))?;
        Ok(SubscriberStage {
            cluster,
            id,
            api_addr: self.api_addr(),
            advertise: self.advertise.clone(),
            history: self.history.windows(),
            partitions: self.partitions.partitions,
            serve: self.serve.limits(),
        })
    }
}

impl RegistryArgs {
    pub fn to_config(&self) -> RegistryStage {
        RegistryStage {
            api_addr: self.api_addr,
            clusters: self.topology.clusters,
            subscribers: self.topology.subscribers,
            history: self.history.windows(),
            partitions: self.partitions.partitions,
            serve: self.serve.limits(),
        }
    }
}
