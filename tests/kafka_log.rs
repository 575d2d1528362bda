//! The Kafka log against a real Apache Kafka broker (started by `scripts/test` via `scripts/kafka`).
//!
//! Each test works in its own namespace, so they share one broker without seeing each other.

#![cfg(feature = "kafka")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use emostream::log::kafka::{KafkaConfig, KafkaLog};
use emostream::log::{Consumer, ConsumerConfig, Log, LogError, Output, Polled, Position, Record, StartAt};

fn brokers() -> String {
    std::env::var("EMOSTREAM_TEST_KAFKA").expect(
        "EMOSTREAM_TEST_KAFKA is not set: run the tests with scripts/test, which starts Kafka, or start one with \
         `KAFKA_PORT=9092 scripts/kafka start` and set EMOSTREAM_TEST_KAFKA=127.0.0.1:9092",
    )
}

fn namespace(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("kl-{test}-{}-{nanos}", std::process::id())
}

async fn log(test: &str) -> KafkaLog {
    let mut c = KafkaConfig::new(brokers());
    c.namespace = namespace(test);
    c.linger = Duration::from_millis(1);
    KafkaLog::connect(c).await.expect("Kafka answers (scripts/kafka start)")
}

fn out(topic: &str, partition: u32, payload: &str) -> Output {
    Output::new(topic, Bytes::from(payload.to_owned())).to_partition(partition)
}

/// Polls until `pred` has seen enough; returns every record read, in order.
async fn read_until(c: &mut dyn Consumer, want: usize, timeout: Duration) -> (Vec<Record>, Vec<Polled>) {
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    let mut events = Vec::new();
    while records.len() < want && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)).await.expect("poll") {
            Polled::Records(r) => records.extend(r),
            Polled::Idle => {}
            other => events.push(other),
        }
    }
    (records, events)
}

async fn wait_assigned(c: &mut dyn Consumer, timeout: Duration) -> Vec<emostream::log::Assignment> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Polled::Assigned(a) = c.poll(Duration::from_millis(200)).await.expect("poll") {
            return a;
        }
    }
    panic!("no assignment within {timeout:?}");
}

#[tokio::test]
async fn ensure_topic_creates_once_and_reports_partitions() {
    let log = log("topics").await;
    assert_eq!(log.ensure_topic("t", 3, false).await.unwrap(), 3);
    assert_eq!(log.ensure_topic("t", 5, false).await.unwrap(), 3, "an existing topic keeps its partitions");
    assert_eq!(log.partitions("t").await.unwrap(), 3);
    assert_eq!(log.ensure_topic("c", 1, true).await.unwrap(), 1);
    assert!(matches!(log.partitions("missing").await, Err(LogError::NoSuchTopic(_))));
    assert!(matches!(log.consumer(ConsumerConfig::new("missing", None, StartAt::Earliest)).await, Err(LogError::NoSuchTopic(_))));
}

#[tokio::test]
async fn appended_records_are_read_back_in_partition_order() {
    let log = log("order").await;
    log.ensure_topic("t", 2, false).await.unwrap();
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.push(out("t", i % 2, &format!("m{i}")));
    }
    log.append(batch).await.unwrap();
    let mut c = log.consumer(ConsumerConfig::new("t", None, StartAt::Earliest)).await.unwrap();
    let (records, events) = read_until(&mut *c, 50, Duration::from_secs(20)).await;
    assert!(matches!(events.first(), Some(Polled::Assigned(a)) if a.len() == 2), "starts with both partitions: {events:?}");
    assert_eq!(records.len(), 50);
    for p in 0..2u32 {
        let got: Vec<String> =
            records.iter().filter(|r| r.partition == p).map(|r| String::from_utf8(r.payload.to_vec()).unwrap()).collect();
        let want: Vec<String> = (0..50).filter(|i| i % 2 == p).map(|i| format!("m{i}")).collect();
        assert_eq!(got, want, "partition {p} in append order");
        let offsets: Vec<u64> = records.iter().filter(|r| r.partition == p).map(|r| r.offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets increase");
    }
}

#[tokio::test]
async fn tail_starts_at_the_newest_records() {
    let log = log("tail").await;
    log.ensure_topic("t", 1, false).await.unwrap();
    log.append((0..10).map(|i| out("t", 0, &format!("m{i}"))).collect()).await.unwrap();
    let mut c = log.consumer(ConsumerConfig::new("t", None, StartAt::Tail(1))).await.unwrap();
    let (records, _) = read_until(&mut *c, 1, Duration::from_secs(20)).await;
    // Tail may reach a little further back (transaction markers take offsets), never to the start.
    assert!(!records.is_empty() && records.len() <= 2, "{records:?}");
    assert_eq!(records.last().unwrap().payload, Bytes::from_static(b"m9"));
    let mut latest = log.consumer(ConsumerConfig::new("t", None, StartAt::Latest)).await.unwrap();
    log.append(vec![out("t", 0, "new")]).await.unwrap();
    let (records, _) = read_until(&mut *latest, 1, Duration::from_secs(20)).await;
    assert_eq!(records.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(), vec![Bytes::from_static(b"new")]);
}

#[tokio::test]
async fn a_commit_writes_outputs_and_positions_with_checkpoints_together() {
    let log = log("commit").await;
    log.ensure_topic("in", 2, false).await.unwrap();
    log.ensure_topic("out", 1, false).await.unwrap();
    log.append((0..6).map(|i| out("in", i % 2, &format!("e{i}"))).collect()).await.unwrap();

    let mut reader = log.consumer(ConsumerConfig::new("out", None, StartAt::Earliest)).await.unwrap();
    {
        let mut c = log.consumer(ConsumerConfig::new("in", Some("g"), StartAt::Earliest)).await.unwrap();
        let assigned = wait_assigned(&mut *c, Duration::from_secs(30)).await;
        assert_eq!(assigned.len(), 2);
        assert!(assigned.iter().all(|a| a.offset == 0 && a.checkpoint.is_none()), "{assigned:?}");
        let (records, _) = read_until(&mut *c, 6, Duration::from_secs(20)).await;
        assert_eq!(records.len(), 6);
        // Commit having processed only partition 0's first two records and partition 1's first one.
        c.commit(
            vec![out("out", 0, "result")],
            vec![
                Position { partition: 0, offset: 2, checkpoint: Some("{\"closed\":7}".into()) },
                Position { partition: 1, offset: 1, checkpoint: None },
            ],
        )
        .await
        .unwrap();
    }
    let (records, _) = read_until(&mut *reader, 1, Duration::from_secs(20)).await;
    assert_eq!(records.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(), vec![Bytes::from_static(b"result")]);

    // The next member of the group resumes exactly there, with the checkpoint.
    let mut c = log.consumer(ConsumerConfig::new("in", Some("g"), StartAt::Earliest)).await.unwrap();
    let mut assigned = wait_assigned(&mut *c, Duration::from_secs(30)).await;
    assigned.sort_by_key(|a| a.partition);
    assert_eq!((assigned[0].offset, assigned[0].checkpoint.as_deref()), (2, Some("{\"closed\":7}")));
    assert_eq!((assigned[1].offset, assigned[1].checkpoint.as_deref()), (1, None));
    let (records, _) = read_until(&mut *c, 3, Duration::from_secs(20)).await;
    let mut got: Vec<String> = records.iter().map(|r| String::from_utf8(r.payload.to_vec()).unwrap()).collect();
    got.sort();
    assert_eq!(got, vec!["e3", "e4", "e5"], "replays from the committed offsets, nothing before");
}

#[tokio::test]
async fn members_of_a_group_share_partitions_and_take_over_a_leaver() {
    let log = log("group").await;
    log.ensure_topic("in", 4, false).await.unwrap();
    let mut a = log.consumer(ConsumerConfig::new("in", Some("g"), StartAt::Earliest)).await.unwrap();
    assert_eq!(wait_assigned(&mut *a, Duration::from_secs(30)).await.len(), 4);
    let mut b = log.consumer(ConsumerConfig::new("in", Some("g"), StartAt::Earliest)).await.unwrap();
    // Both poll until the group settles with two partitions each.
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut owned_a, mut owned_b) = (vec![0, 1, 2, 3], Vec::<u32>::new());
    while (owned_a.len() != 2 || owned_b.len() != 2) && Instant::now() < deadline {
        for (c, owned) in [(&mut a, &mut owned_a), (&mut b, &mut owned_b)] {
            match c.poll(Duration::from_millis(100)).await.unwrap() {
                Polled::Assigned(x) => owned.extend(x.iter().map(|x| x.partition)),
                Polled::Revoked(x) => owned.retain(|p| !x.contains(p)),
                _ => {}
            }
        }
    }
    assert_eq!((owned_a.len(), owned_b.len()), (2, 2), "a {owned_a:?} b {owned_b:?}");
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(40);
    while owned_a.len() != 4 && Instant::now() < deadline {
        match a.poll(Duration::from_millis(100)).await.unwrap() {
            Polled::Assigned(x) => owned_a.extend(x.iter().map(|x| x.partition)),
            Polled::Revoked(x) => owned_a.retain(|p| !x.contains(p)),
            _ => {}
        }
    }
    owned_a.sort_unstable();
    assert_eq!(owned_a, vec![0, 1, 2, 3], "the remaining member takes every partition");
}

#[tokio::test]
async fn a_second_instance_with_the_same_instance_id_fences_the_first_and_one_of_them_stops() {
    let log = log("fence").await;
    log.ensure_topic("in", 1, false).await.unwrap();
    log.ensure_topic("out", 1, false).await.unwrap();
    let cfg = || ConsumerConfig { instance_id: Some("stage-1".into()), ..ConsumerConfig::new("in", Some("g"), StartAt::Earliest) };
    let mut first = log.consumer(cfg()).await.unwrap();
    wait_assigned(&mut *first, Duration::from_secs(30)).await;
    let mut second = log.consumer(cfg()).await.unwrap();
    // The zombie's commit writes nothing: refused, or (taken for a fence by its own earlier session)
    // dropped while it joins the group again.
    let r = first.commit(vec![out("out", 0, "zombie")], vec![]).await;
    assert!(matches!(r, Ok(()) | Err(LogError::Fenced(_))), "the zombie's commit is refused: {r:?}");
    let mut reader = log.consumer(ConsumerConfig::new("out", None, StartAt::Earliest)).await.unwrap();
    let (records, _) = read_until(&mut *reader, 1, Duration::from_secs(3)).await;
    assert!(records.is_empty(), "nothing of the zombie is visible: {records:?}");

    // Both live: each join fences the other, and within seconds one of them stops, saying why.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut members = [(&mut first, "first", true), (&mut second, "second", true)];
    let stopped = 'ping_pong: loop {
        assert!(Instant::now() < deadline, "two live members with one instance id both still run");
        for (c, name, assigned) in &mut members {
            match c.poll(Duration::from_millis(100)).await {
                Ok(Polled::Assigned(_)) => *assigned = true,
                Ok(Polled::Revoked(_)) => *assigned = false,
                Ok(_) => {}
                Err(LogError::Fenced(why)) => {
                    assert!(why.contains("another live process holds that instance id"), "{name}: {why}");
                    break 'ping_pong *name;
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
    };
    // The other one works on: its commit is visible, once.
    let survivor = members.iter_mut().find(|(_, n, _)| *n != stopped).unwrap();
    if !survivor.2 {
        wait_assigned(&mut **survivor.0, Duration::from_secs(30)).await;
    }
    let mut committed = false;
    for _ in 0..50 {
        survivor.0.commit(vec![out("out", 0, "survivor")], vec![]).await.expect("the survivor commits");
        let (records, _) = read_until(&mut *reader, 1, Duration::from_secs(3)).await;
        if !records.is_empty() {
            assert_eq!(records.iter().map(|r| r.payload.as_ref()).collect::<Vec<_>>(), vec![b"survivor".as_ref()]);
            committed = true;
            break;
        }
        // A commit skipped during a rebalance is followed by its events.
        let _ = survivor.0.poll(Duration::from_millis(100)).await;
    }
    assert!(committed, "the surviving member's commit became visible");
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error() {
    let mut c = KafkaConfig::new("127.0.0.1:1");
    c.connect_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let err = KafkaLog::connect(c).await.expect_err("nothing listens on port 1");
    assert!(started.elapsed() < Duration::from_secs(10));
    let msg = err.to_string();
    assert!(matches!(err, LogError::Unreachable { .. }), "{msg}");
    assert!(msg.contains("127.0.0.1:1") && msg.contains("scripts/kafka start"), "{msg}");
}
