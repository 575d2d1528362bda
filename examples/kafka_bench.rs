//! Aggregation throughput over Kafka, for `bench/run`: fills `emoji_topic` with a backlog of events
//! (each its own entry, count 1: the worst case, no pre-aggregation by ingest), then starts N
//! `emostream aggregate` processes and times how fast the backlog comes out as partials.
//!
//! `cargo run --release --example kafka_bench -- --brokers 127.0.0.1:19092 --events 10000000 --aggregators 2`
//!
//! Prints one JSON line: events, aggregators, partitions, fill_s, aggregate_s, events_per_s.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emostream::core::record::{EventBatchWriter, PartialRecord};
use emostream::log::kafka::{KafkaConfig, KafkaLog};
use emostream::log::{ConsumerConfig, Log, Output, Polled, StartAt, topics};

struct Args {
    brokers: String,
    events: u64,
    aggregators: u32,
    partitions: u32,
    bin: String,
}

fn args() -> Args {
    let mut a = Args {
        brokers: "127.0.0.1:19092".into(),
        events: 10_000_000,
        aggregators: 1,
        partitions: 6,
        bin: std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.parent()?.join("emostream")))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "emostream".into()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--brokers" => a.brokers = v,
            "--events" => a.events = v.parse().expect("--events: a number"),
            "--aggregators" => a.aggregators = v.parse().expect("--aggregators: a number"),
            "--partitions" => a.partitions = v.parse().expect("--partitions: a number"),
            "--bin" => a.bin = v,
            _ => panic!("unknown flag {flag} (--brokers, --events, --aggregators, --partitions, --bin)"),
        }
    }
    a
}

const ENTRIES_PER_RECORD: u64 = 2_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let namespace = format!("bench-{nanos}");
    let mut config = KafkaConfig::new(a.brokers.clone());
    config.namespace = namespace.clone();
    config.linger = Duration::from_millis(20);
    let log = Arc::new(KafkaLog::connect(config).await?);
    emostream::pipeline::ensure_topics(&*log, a.partitions, 1).await?;

    // Fill: records of 2 000 one-event entries, spread over the partitions, timestamps now.
    let emojis = ["😀", "😂", "😍", "👍", "🔥", "🎉"];
    let started = Instant::now();
    let records = a.events.div_ceil(ENTRIES_PER_RECORD);
    let mut written = 0u64;
    let mut inflight = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for r in 0..records {
        let n = ENTRIES_PER_RECORD.min(a.events - written);
        written += n;
        let ts = emostream::stages::now_ms();
        let mut w = EventBatchWriter::new();
        for i in 0..n {
            w.push(ts, emojis[(i % 6) as usize], 1);
        }
        let out = Output::new(topics::EVENTS, w.finish()).to_partition((r % u64::from(a.partitions)) as u32);
        let l = log.clone();
        inflight.push(async move { l.append(vec![out]).await });
        if inflight.len() >= 256 {
            inflight.next().await.expect("pending append")?;
        }
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    let fill_s = started.elapsed().as_secs_f64();
    eprintln!("filled {} events in {fill_s:.1} s ({:.2} M events/s into Kafka)", a.events, a.events as f64 / fill_s / 1e6);

    // Read partials as they come out.
    let mut partials = log.consumer(ConsumerConfig::new(topics::PARTIALS, None, StartAt::Earliest)).await?;
    let started = Instant::now();
    let mut children: Vec<Child> = (0..a.aggregators)
        .map(|i| {
            Command::new(&a.bin)
                .args(["aggregate", "--kafka", &a.brokers, "--namespace", &namespace, "--window", "200ms", "--grace", "0ms"])
                .args(["--partitions", &a.partitions.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(std::env::temp_dir().join(format!("{namespace}-aggregate-{i}.log")))
                        .map_or_else(|_| Stdio::null(), Stdio::from),
                )
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {} aggregate: {e} (build it: cargo build --release)", a.bin))
        })
        .collect();
    let mut counted = 0u64;
    let mut seen = std::collections::HashMap::new();
    let mut first_at = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while counted < a.events {
        anyhow::ensure!(Instant::now() < deadline, "only {counted} of {} events came out within 10 minutes", a.events);
        if let Polled::Records(rs) = partials.poll(Duration::from_millis(100)).await? {
            for r in rs {
                let p = PartialRecord::from_bytes(&r.payload)?;
                let n: u64 = p.partial.counts.values().sum();
                if let Some(prev) = seen.insert((p.partition, p.partial.window_start), n) {
                    anyhow::bail!("partition {} window {} emitted twice: {prev} then {n} events", p.partition, p.partial.window_start);
                }
                if n > 0 && first_at.is_none() {
                    first_at = Some(started.elapsed());
                }
                counted += n;
            }
        }
    }
    let aggregate_s = started.elapsed().as_secs_f64();
    for c in &mut children {
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for c in &mut children {
        let _ = c.wait();
    }
    anyhow::ensure!(counted == a.events, "counted {counted}, wrote {}", a.events);
    let first_s = first_at.map_or(0.0, |d| d.as_secs_f64());
    println!(
        "{}",
        serde_json::json!({
            "events": a.events,
            "aggregators": a.aggregators,
            "partitions": a.partitions,
            "fill_s": fill_s,
            "aggregate_s": aggregate_s,
            "first_partial_s": first_s,
            "events_per_s": a.events as f64 / aggregate_s,
            // Without process start and the group join: from the first partial on.
            "steady_events_per_s": a.events as f64 / (aggregate_s - first_s).max(0.001),
        })
    );
    Ok(())
}
