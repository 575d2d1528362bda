//! How long one transactional commit takes, and when a `read_committed` reader sees its output: the
//! figure behind "Kafka mode latency" in bench/analysis.md.
//!
//! `cargo run --release --example kafka_commit_latency -- 127.0.0.1:19092` (a broker from `scripts/kafka start`)
//!
//! Prints one line per commit (10 commits of one record, 300 ms apart) and the medians.

use std::time::{Duration, Instant};

use bytes::Bytes;
use emostream::log::kafka::{KafkaConfig, KafkaLog};
use emostream::log::{ConsumerConfig, Log, Output, Polled, StartAt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let brokers = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:19092".into());
    let mut config = KafkaConfig::new(brokers);
    config.namespace = format!("commit-latency-{}", std::process::id());
    let log = KafkaLog::connect(config).await?;
    log.ensure_topic("in", 1, false).await?;
    log.ensure_topic("out", 1, false).await?;
    let mut stage = log.consumer(ConsumerConfig::new("in", Some("g"), StartAt::Earliest)).await?;
    while !matches!(stage.poll(Duration::from_millis(200)).await?, Polled::Assigned(_)) {}
    let mut reader = log.consumer(ConsumerConfig::new("out", None, StartAt::Latest)).await?;
    let _ = reader.poll(Duration::from_millis(100)).await?;
    let (mut commits, mut visible) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let started = Instant::now();
        stage.commit(vec![Output::new("out", Bytes::from(format!("m{i}"))).to_partition(0)], vec![]).await?;
        commits.push(started.elapsed());
        while !matches!(reader.poll(Duration::from_secs(1)).await?, Polled::Records(_)) {}
        visible.push(started.elapsed());
        println!("commit {:?}, visible to a read_committed reader after {:?}", commits[i], visible[i]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    commits.sort();
    visible.sort();
    println!("median: commit {:?}, visible {:?}", commits[5], visible[5]);
    Ok(())
}
