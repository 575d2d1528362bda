//! Cluster publisher N: forwards every swarm from `main_topic` to `clusterN`, committing its read
//! position with what it forwarded (one transaction in Kafka), so no window is forwarded twice.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::log::{ConsumerConfig, Log, LogError, Output, Polled, Position, StartAt, topics};

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// 1-based cluster id.
    pub id: u32,
    pub instance_id: Option<String>,
}

pub fn group(id: u32) -> String {
    format!("emostream-cluster-{id}")
}

/// Forwards until `shutdown`, then forwards what is already in `main_topic`.
///
/// # Errors
/// When the log fails in a way retrying cannot fix.
pub async fn run(log: Arc<dyn Log>, config: ClusterConfig, shutdown: CancellationToken) -> Result<(), LogError> {
    let out_topic = topics::cluster(config.id);
    let mut consumer = log
        .consumer(ConsumerConfig {
            instance_id: config.instance_id.clone(),
            ..ConsumerConfig::new(topics::MAIN, Some(&group(config.id)), StartAt::Tail(1))
        })
        .await?;
    let forwarded = metrics::counter!(crate::telemetry::WINDOWS_FORWARDED, "cluster" => config.id.to_string());
    let mut stopping = false;
    loop {
        let polled = tokio::select! {
            p = consumer.poll(Duration::from_millis(if stopping { 100 } else { 500 })) => p?,
            () = shutdown.cancelled(), if !stopping => { stopping = true; continue; }
        };
        match polled {
            Polled::Records(records) => {
                let mut last: std::collections::BTreeMap<u32, u64> = Default::default();
                let outputs: Vec<Output> = records
                    .into_iter()
                    .map(|r| {
                        last.insert(r.partition, r.offset + 1);
                        Output::new(out_topic.clone(), r.payload).to_partition(0)
                    })
                    .collect();
                let positions = last.into_iter().map(|(partition, offset)| Position { partition, offset, checkpoint: None }).collect();
                let n = outputs.len() as u64;
                consumer.commit(outputs, positions).await?;
                forwarded.increment(n);
            }
            Polled::Idle if stopping => break,
            Polled::Assigned(_) | Polled::Revoked(_) | Polled::Idle => {}
        }
    }
    Ok(())
}
