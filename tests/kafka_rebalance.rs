//! Aggregators that join while a backlog is being counted: the rebalance moves partitions between
//! busy processes. Every event must come out in exactly one partial, and no (partition, window) twice.
//!
//! This is the scenario that caught a member committing for partitions the group had already given
//! to another (between the rebalance callback and the stage seeing `Revoked`).

#![cfg(feature = "kafka")]

mod distributed;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use distributed::*;
use emostream::core::record::{EventBatchWriter, PartialRecord};
use emostream::log::kafka::{KafkaConfig, KafkaLog};
use emostream::log::{ConsumerConfig, Log, Output, Polled, StartAt, topics};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregators_joining_a_busy_group_count_every_event_once() {
    for round in 0..4 {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let namespace = format!("rebalance-{round}-{}-{nanos}", std::process::id());
        let mut config = KafkaConfig::new(brokers());
        config.namespace = namespace.clone();
        let log = KafkaLog::connect(config).await.expect("Kafka answers");
        emostream::pipeline::ensure_topics(&log, 6, 1).await.unwrap();

        // A backlog: 6 000 records of 1 000 one-event entries over 6 partitions.
        let emojis = ["😀", "😂", "😍", "👍"];
        let (records, per_record) = (6_000u64, 1_000u64);
        let mut batch = Vec::new();
        for r in 0..records {
            let mut w = EventBatchWriter::new();
            for i in 0..per_record {
                w.push(emostream::stages::now_ms(), emojis[(i % 4) as usize], 1);
            }
            batch.push(Output::new(topics::EVENTS, w.finish()).to_partition((r % 6) as u32));
            if batch.len() == 200 {
                log.append(std::mem::take(&mut batch)).await.unwrap();
            }
        }
        log.append(batch).await.unwrap();
        let want = records * per_record;

        let mut partials = log.consumer(ConsumerConfig::new(topics::PARTIALS, None, StartAt::Earliest)).await.unwrap();
        let dir = std::env::temp_dir().join(format!("emostream-{namespace}"));
        std::fs::create_dir_all(&dir).unwrap();
        let args = |_: u32| -> Vec<String> {
            ["aggregate", "--kafka", &brokers(), "--namespace", &namespace, "--partitions", "6", "--window", "20ms", "--grace", "0ms"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        // Two start together; four more join while they are busy, and the first leaves: each is a
        // rebalance of members that commit every 20 ms window.
        let mut procs = vec![Proc::spawn("aggregate-1", &args(1), &dir), Proc::spawn("aggregate-2", &args(2), &dir)];
        let started = Instant::now();

        let mut seen: HashMap<(u32, i64), u64> = HashMap::new();
        let mut counted = 0u64;
        while counted < want {
            for (n, at) in [(3, 150), (4, 450), (5, 750), (6, 1050)] {
                if procs.len() == n - 1 && started.elapsed() > Duration::from_millis(at) {
                    procs.push(Proc::spawn(&format!("aggregate-{n}"), &args(n as u32), &dir));
                }
            }
            if procs.len() == 6 && started.elapsed() > Duration::from_millis(1300) && procs[0].name == "aggregate-1" {
                let mut first = procs.remove(0);
                assert!(first.terminate().success(), "aggregate-1 leaves cleanly");
            }
            for p in &mut procs {
                p.assert_running();
            }
            assert!(started.elapsed() < Duration::from_secs(120), "round {round}: {counted} of {want} events counted in 2 minutes");
            if let Polled::Records(rs) = partials.poll(Duration::from_millis(200)).await.unwrap() {
                for r in rs {
                    let p = PartialRecord::from_bytes(&r.payload).unwrap();
                    let n: u64 = p.partial.counts.values().sum();
                    if let Some(prev) = seen.insert((p.partition, p.partial.window_start), n) {
                        panic!(
                            "round {round}: partition {} window {} emitted twice ({prev} then {n} events)",
                            p.partition, p.partial.window_start
                        );
                    }
                    counted += n;
                }
            }
        }
        // Nothing more comes: not a single event counted twice, even late.
        let settle = Instant::now() + Duration::from_secs(2);
        while Instant::now() < settle {
            if let Polled::Records(rs) = partials.poll(Duration::from_millis(200)).await.unwrap() {
                for r in rs {
                    let p = PartialRecord::from_bytes(&r.payload).unwrap();
                    assert!(seen.insert((p.partition, p.partial.window_start), 0).is_none(), "round {round}: a window emitted twice");
                    counted += p.partial.counts.values().sum::<u64>();
                }
            }
        }
        assert_eq!(counted, want, "round {round}: every event in exactly one partial");
    }
}
