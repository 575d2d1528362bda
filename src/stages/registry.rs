//! Registry: which client is subscribed to which subscriber (cluster id, subscriber id).
//!
//! Embedded, this map is the registry. Distributed, the `registry` process and every subscriber
//! process hold one, materialized from the compacted `emostream_subscriptions` topic with [`follow`].
//! Either way no stage asks another over HTTP per message.
//!
//! The topic has two key spaces ([`Entry`]): `client/{client_id}` → an [`Update`] (slot `null`: the
//! client unsubscribed), and `subscriber/{cluster}.{subscriber}` → an [`Announcement`], where a
//! subscriber process says at which URL it serves its clients' streams (url `null`: it stopped).
//! The registry process writes the first, subscriber processes the second.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::core::event::MAX_CLIENT_ID_BYTES;
use crate::log::{ConsumerConfig, Log, LogError, Output, Polled, StartAt, topics};

/// Where a client wants to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A given cluster and subscriber.
    Exact { cluster: u32, subscriber: u32 },
    /// The subscriber with the fewest clients.
    LeastLoaded,
}

/// A client's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub cluster: u32,
    pub subscriber: u32,
}

impl Slot {
    /// The original's key: cluster id then subscriber id, e.g. "11".
    pub fn key(self) -> String {
        format!("{}{}", self.cluster, self.subscriber)
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("field `client_id` must not be empty")]
    EmptyClientId,
    #[error("field `client_id` is {0} bytes; the limit is {MAX_CLIENT_ID_BYTES}")]
    ClientIdTooLong(usize),
    #[error("cluster {cluster} does not exist (clusters are 1..={clusters})")]
    NoSuchCluster { cluster: u32, clusters: u32 },
    #[error("subscriber {subscriber} does not exist (subscribers are 1..={subscribers} in each cluster)")]
    NoSuchSubscriber { subscriber: u32, subscribers: u32 },
    #[error(
        "subscriber {cluster}.{subscriber} is not running (no `emostream subscriber --cluster {cluster} --id {subscriber}` has announced itself); retry shortly or pick another"
    )]
    NotRunning { cluster: u32, subscriber: u32 },
    #[error("no subscriber is running yet (start `emostream subscriber --cluster N --id M`); retry shortly")]
    NoSubscribers,
}

impl RegistryError {
    /// True when the request was fine but the subscribers it needs are not there (yet): retryable.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::NotRunning { .. } | Self::NoSubscribers)
    }
}

/// A change to the registry, as carried by the compacted topic (value `None` = unsubscribed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub client_id: String,
    pub slot: Option<Slot>,
}

/// A subscriber process's announcement: where its clients connect (`url: None`: it stopped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub cluster: u32,
    pub subscriber: u32,
    /// Base URL of its stream endpoints, e.g. `http://10.0.0.7:5101`.
    pub url: Option<String>,
}

/// One record of the subscriptions topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Client(Update),
    Subscriber(Announcement),
}

const CLIENT_KEY: &str = "client/";
const SUBSCRIBER_KEY: &str = "subscriber/";

impl Entry {
    /// The record for the subscriptions topic: keyed so compaction keeps the latest of each client and
    /// each subscriber.
    pub fn to_output(&self) -> Output {
        let (key, json) = match self {
            Entry::Client(u) => (format!("{CLIENT_KEY}{}", u.client_id), serde_json::to_vec(u)),
            Entry::Subscriber(a) => (format!("{SUBSCRIBER_KEY}{}.{}", a.cluster, a.subscriber), serde_json::to_vec(a)),
        };
        Output::new(topics::SUBSCRIPTIONS, Bytes::from(json.expect("registry entries serialize")))
            .with_key(Bytes::from(key))
            .to_partition(0)
    }

    /// Reads a record of the subscriptions topic. An empty payload (a Kafka tombstone) removes the key.
    ///
    /// # Errors
    /// A message when the record is not a registry entry.
    pub fn decode(key: Option<&[u8]>, payload: &[u8]) -> Result<Entry, String> {
        let key = key.map(String::from_utf8_lossy).ok_or("a subscriptions record without a key")?;
        if let Some(client_id) = key.strip_prefix(CLIENT_KEY) {
            if payload.is_empty() {
                return Ok(Entry::Client(Update { client_id: client_id.to_string(), slot: None }));
            }
            let u: Update = serde_json::from_slice(payload).map_err(|e| format!("key {key:?}: {e}"))?;
            return Ok(Entry::Client(u));
        }
        if let Some(rest) = key.strip_prefix(SUBSCRIBER_KEY) {
            if payload.is_empty() {
                let (c, s) = parse_key(rest)?;
                return Ok(Entry::Subscriber(Announcement { cluster: c, subscriber: s, url: None }));
            }
            let a: Announcement = serde_json::from_slice(payload).map_err(|e| format!("key {key:?}: {e}"))?;
            return Ok(Entry::Subscriber(a));
        }
        Err(format!("unknown key {key:?} in the subscriptions topic"))
    }
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<String, (Slot, CancellationToken)>,
    by_slot: BTreeMap<(u32, u32), BTreeSet<String>>,
    /// Announced subscribers and their URLs.
    urls: BTreeMap<(u32, u32), String>,
    /// Per client, this process's writes not yet read back from the log (see [`Registry::commit_local`]).
    unread_writes: HashMap<String, u32>,
}

/// The subscription map. `std::sync::Mutex`: touched on subscribe, unsubscribe and stream open,
/// never on the per-window delivery path and never across an await.
#[derive(Debug)]
pub struct Registry {
    clusters: u32,
    subscribers: u32,
    /// Distributed: place clients only on subscribers that announced themselves.
    announced_only: bool,
    state: Mutex<State>,
    /// Ticks on every change, for stream requests waiting for their client to appear.
    version: watch::Sender<u64>,
}

impl Registry {
    /// The embedded registry: every subscriber of the topology runs in this process.
    pub fn new(clusters: u32, subscribers: u32) -> Self {
        Self { clusters, subscribers, announced_only: false, state: Mutex::new(State::default()), version: watch::Sender::new(0) }
    }

    /// The distributed registry: clients are placed only on subscribers that announced themselves on
    /// the subscriptions topic.
    pub fn distributed(clusters: u32, subscribers: u32) -> Self {
        Self { announced_only: true, ..Self::new(clusters, subscribers) }
    }

    pub fn clusters(&self) -> u32 {
        self.clusters
    }

    pub fn subscribers(&self) -> u32 {
        self.subscribers
    }

    /// Checks a client id and a placement without changing anything.
    ///
    /// # Errors
    /// [`RegistryError`] naming what is wrong.
    pub fn validate(&self, client_id: &str, placement: Placement) -> Result<(), RegistryError> {
        if client_id.is_empty() {
            return Err(RegistryError::EmptyClientId);
        }
        if client_id.len() > MAX_CLIENT_ID_BYTES {
            return Err(RegistryError::ClientIdTooLong(client_id.len()));
        }
        if let Placement::Exact { cluster, subscriber } = placement {
            if cluster == 0 || cluster > self.clusters {
                return Err(RegistryError::NoSuchCluster { cluster, clusters: self.clusters });
            }
            if subscriber == 0 || subscriber > self.subscribers {
                return Err(RegistryError::NoSuchSubscriber { subscriber, subscribers: self.subscribers });
            }
        }
        Ok(())
    }

    /// Where a subscription would place the client, without changing anything (the distributed
    /// registry writes the result to the log first, then [`commit_local`](Self::commit_local)s it).
    ///
    /// # Errors
    /// [`RegistryError`] when the id or placement is invalid, or (distributed) the subscriber is not
    /// running.
    pub fn place(&self, client_id: &str, placement: Placement) -> Result<Slot, RegistryError> {
        self.validate(client_id, placement)?;
        let st = self.state.lock().expect("registry lock poisoned");
        Ok(match placement {
            Placement::Exact { cluster, subscriber } => {
                if self.announced_only && !st.urls.contains_key(&(cluster, subscriber)) {
                    return Err(RegistryError::NotRunning { cluster, subscriber });
                }
                Slot { cluster, subscriber }
            }
            Placement::LeastLoaded => match st.clients.get(client_id) {
                Some((slot, _)) => *slot, // already placed: stay
                None => self.least_loaded(&st).ok_or(RegistryError::NoSubscribers)?,
            },
        })
    }

    /// Subscribes (or moves) a client. Moving ends its open streams on the old subscriber.
    ///
    /// # Errors
    /// [`RegistryError`] when the id or placement is invalid; nothing changes then.
    pub fn subscribe(&self, client_id: &str, placement: Placement) -> Result<Slot, RegistryError> {
        let slot = self.place(client_id, placement)?;
        self.assign(client_id, Some(slot));
        Ok(slot)
    }

    /// Removes a client and ends its open streams. Returns its slot if it was subscribed.
    pub fn unsubscribe(&self, client_id: &str) -> Option<Slot> {
        self.assign(client_id, None)
    }

    /// Puts a client on a slot already [`place`](Self::place)d (or removes it); returns where it was.
    pub fn assign(&self, client_id: &str, slot: Option<Slot>) -> Option<Slot> {
        self.change(|st| Self::set(st, client_id, slot))
    }

    /// Applies an update this process has just written to the log, so its own answers reflect it at
    /// once (read-your-writes). Until the log gives the write back, older records of the same client
    /// read from the log are not applied over it.
    pub fn commit_local(&self, update: &Update) -> Option<Slot> {
        self.change(|st| {
            *st.unread_writes.entry(update.client_id.clone()).or_default() += 1;
            Self::set(st, &update.client_id, update.slot)
        })
    }

    /// Applies an update read from the subscriptions topic.
    pub fn apply(&self, update: &Update) {
        self.change(|st| {
            if let Some(n) = st.unread_writes.get_mut(&update.client_id) {
                // This process wrote this client since: its state is already at least this new. Once
                // every such write is read back, the log and this map agree again.
                *n -= 1;
                if *n == 0 {
                    st.unread_writes.remove(&update.client_id);
                }
                return;
            }
            Self::set(st, &update.client_id, update.slot);
        });
    }

    /// Records where a subscriber serves its clients (or that it stopped).
    pub fn announce(&self, a: &Announcement) {
        self.change(|st| match &a.url {
            Some(url) => {
                st.urls.insert((a.cluster, a.subscriber), url.clone());
            }
            None => {
                st.urls.remove(&(a.cluster, a.subscriber));
            }
        });
    }

    /// Applies one record of the subscriptions topic.
    pub fn apply_entry(&self, entry: &Entry) {
        match entry {
            Entry::Client(u) => self.apply(u),
            Entry::Subscriber(a) => self.announce(a),
        }
    }

    /// The base URL a subscriber announced, if it is running.
    pub fn url(&self, slot: Slot) -> Option<String> {
        self.state.lock().expect("registry lock poisoned").urls.get(&(slot.cluster, slot.subscriber)).cloned()
    }

    /// Announced subscribers: key ("11") → base URL.
    pub fn directory(&self) -> BTreeMap<String, String> {
        let st = self.state.lock().expect("registry lock poisoned");
        st.urls.iter().map(|((c, s), url)| (Slot { cluster: *c, subscriber: *s }.key(), url.clone())).collect()
    }

    /// Waits up to `timeout` until the client is subscribed somewhere `accept` likes; returns where it
    /// is then (which `accept` may not like, when the wait ran out). Covers the moment between the
    /// registry's write and this process reading it.
    pub async fn wait_for(&self, client_id: &str, timeout: Duration, accept: impl Fn(Slot) -> bool) -> Option<(Slot, CancellationToken)> {
        let mut changes = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let found = self.lookup(client_id);
            if found.as_ref().is_some_and(|(slot, _)| accept(*slot)) {
                return found;
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return found;
            }
        }
    }

    /// Runs a change under the lock, then wakes whoever waits for one.
    fn change<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state.lock().expect("registry lock poisoned"));
        self.version.send_modify(|v| *v += 1);
        r
    }

    fn set(st: &mut State, client_id: &str, slot: Option<Slot>) -> Option<Slot> {
        let old = st.clients.get(client_id).map(|(s, _)| *s);
        if old == slot {
            return old;
        }
        if let Some((old_slot, token)) = st.clients.remove(client_id) {
            token.cancel();
            if let Some(set) = st.by_slot.get_mut(&(old_slot.cluster, old_slot.subscriber)) {
                set.remove(client_id);
                if set.is_empty() {
                    st.by_slot.remove(&(old_slot.cluster, old_slot.subscriber));
                }
            }
        }
        if let Some(s) = slot {
            st.clients.insert(client_id.to_string(), (s, CancellationToken::new()));
            st.by_slot.entry((s.cluster, s.subscriber)).or_default().insert(client_id.to_string());
        }
        old
    }

    /// The subscriber with the fewest clients (distributed: among the announced ones).
    fn least_loaded(&self, st: &State) -> Option<Slot> {
        let mut best = None;
        let mut best_n = usize::MAX;
        for subscriber in 1..=self.subscribers {
            for cluster in 1..=self.clusters {
                if self.announced_only && !st.urls.contains_key(&(cluster, subscriber)) {
                    continue;
                }
                let n = st.by_slot.get(&(cluster, subscriber)).map_or(0, BTreeSet::len);
                if n < best_n {
                    best = Some(Slot { cluster, subscriber });
                    best_n = n;
                }
            }
        }
        best
    }

    /// The client's slot and a token cancelled when it unsubscribes or moves.
    pub fn lookup(&self, client_id: &str) -> Option<(Slot, CancellationToken)> {
        self.state.lock().expect("registry lock poisoned").clients.get(client_id).cloned()
    }

    /// The original's map: `{"11": ["c1", "c2"], "23": ["c3"]}`.
    pub fn map(&self) -> BTreeMap<String, Vec<String>> {
        let st = self.state.lock().expect("registry lock poisoned");
        st.by_slot.iter().map(|((c, s), ids)| (Slot { cluster: *c, subscriber: *s }.key(), ids.iter().cloned().collect())).collect()
    }

    /// Clients per slot.
    pub fn load(&self) -> BTreeMap<String, usize> {
        let st = self.state.lock().expect("registry lock poisoned");
        st.by_slot.iter().map(|((c, s), ids)| (Slot { cluster: *c, subscriber: *s }.key(), ids.len())).collect()
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("registry lock poisoned").clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Materializes the subscriptions topic into `registry` until `shutdown`, reading it from the start.
/// `caught_up` is cancelled once what the topic held at the start is applied (the first poll that
/// brings nothing new), so a process can wait for it before it serves.
///
/// # Errors
/// When the log fails.
pub async fn follow(
    log: Arc<dyn Log>,
    registry: Arc<Registry>,
    caught_up: CancellationToken,
    shutdown: CancellationToken,
) -> Result<(), LogError> {
    let _caught_up = caught_up.clone().drop_guard();
    let mut consumer = log.consumer(ConsumerConfig::new(topics::SUBSCRIPTIONS, None, StartAt::Earliest)).await?;
    loop {
        let polled = tokio::select! {
            p = consumer.poll(Duration::from_millis(200)) => p?,
            () = shutdown.cancelled() => return Ok(()),
        };
        match polled {
            Polled::Records(records) => {
                for r in records {
                    match Entry::decode(r.key.as_deref(), &r.payload) {
                        Ok(e) => registry.apply_entry(&e),
                        Err(e) => tracing::warn!(offset = r.offset, error = %e, "skipping a subscriptions record"),
                    }
                }
            }
            Polled::Idle => caught_up.cancel(),
            Polled::Assigned(_) | Polled::Revoked(_) => {}
        }
    }
}

/// Parses the original's key "CS" (e.g. "23": cluster 2, subscriber 3); ids may have several digits
/// when written "C.S" or "C:S".
///
/// # Errors
/// A message naming the key when it is not of that form.
pub fn parse_key(key: &str) -> Result<(u32, u32), String> {
    let bad = || format!("subscription_key {key:?} must be the cluster id then the subscriber id, e.g. \"11\" or \"2.3\"");
    let (c, s) = if let Some((c, s)) = key.split_once(['.', ':', '-']) {
        (c, s)
    } else if key.len() == 2 && key.is_ascii() {
        key.split_at(1)
    } else {
        return Err(bad());
    };
    Ok((c.parse().map_err(|_| bad())?, s.parse().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_on_the_least_loaded_subscriber() {
        let r = Registry::new(3, 3);
        let mut seen = BTreeSet::new();
        for i in 0..9 {
            seen.insert(r.subscribe(&format!("c{i}"), Placement::LeastLoaded).unwrap().key());
        }
        assert_eq!(seen.len(), 9, "nine clients spread over nine subscribers");
        assert_eq!(r.load().values().copied().collect::<Vec<_>>(), vec![1; 9]);
    }

    #[test]
    fn moving_a_client_cancels_its_streams() {
        let r = Registry::new(3, 3);
        r.subscribe("c1", Placement::Exact { cluster: 1, subscriber: 1 }).unwrap();
        let (_, token) = r.lookup("c1").unwrap();
        r.subscribe("c1", Placement::Exact { cluster: 1, subscriber: 1 }).unwrap();
        assert!(!token.is_cancelled(), "same place: streams stay");
        r.subscribe("c1", Placement::Exact { cluster: 2, subscriber: 3 }).unwrap();
        assert!(token.is_cancelled());
        assert_eq!(r.map(), [("23".to_string(), vec!["c1".to_string()])].into_iter().collect());
        let (_, token) = r.lookup("c1").unwrap();
        assert_eq!(r.unsubscribe("c1"), Some(Slot { cluster: 2, subscriber: 3 }));
        assert!(token.is_cancelled());
        assert!(r.map().is_empty());
    }

    #[test]
    fn refuses_bad_placements_without_change() {
        let r = Registry::new(3, 3);
        assert_eq!(
            r.subscribe("c", Placement::Exact { cluster: 4, subscriber: 1 }).unwrap_err(),
            RegistryError::NoSuchCluster { cluster: 4, clusters: 3 }
        );
        assert!(r.subscribe("", Placement::LeastLoaded).is_err());
        assert!(r.is_empty());
    }

    #[test]
    fn entries_round_trip_through_the_topic_format() {
        let u = Entry::Client(Update { client_id: "subscriber/1.1".into(), slot: Some(Slot { cluster: 2, subscriber: 3 }) });
        let a = Entry::Subscriber(Announcement { cluster: 1, subscriber: 2, url: Some("http://h:5102".into()) });
        for e in [&u, &a] {
            let o = e.to_output();
            assert_eq!(&Entry::decode(o.key.as_deref(), &o.payload).unwrap(), e);
        }
        assert_eq!(
            u.to_output().key.unwrap(),
            Bytes::from_static(b"client/subscriber/1.1"),
            "client ids cannot collide with subscriber keys"
        );
        assert_eq!(
            Entry::decode(Some(b"client/c1"), b"").unwrap(),
            Entry::Client(Update { client_id: "c1".into(), slot: None }),
            "a tombstone unsubscribes"
        );
        assert!(Entry::decode(Some(b"other"), b"{}").is_err());
        assert!(Entry::decode(None, b"{}").is_err());
    }

    #[test]
    fn distributed_placement_uses_announced_subscribers_only() {
        let r = Registry::distributed(3, 3);
        assert_eq!(r.place("c", Placement::LeastLoaded), Err(RegistryError::NoSubscribers));
        assert!(r.place("c", Placement::Exact { cluster: 1, subscriber: 1 }).unwrap_err().is_unavailable());
        r.announce(&Announcement { cluster: 2, subscriber: 2, url: Some("http://a".into()) });
        r.announce(&Announcement { cluster: 3, subscriber: 1, url: Some("http://b".into()) });
        let mut seen = BTreeSet::new();
        for i in 0..4 {
            let id = format!("c{i}");
            let slot = r.place(&id, Placement::LeastLoaded).unwrap();
            r.commit_local(&Update { client_id: id, slot: Some(slot) });
            seen.insert(slot.key());
        }
        assert_eq!(seen, ["22".to_string(), "31".to_string()].into_iter().collect());
        assert_eq!(r.load().values().copied().collect::<Vec<_>>(), vec![2, 2]);
        r.announce(&Announcement { cluster: 2, subscriber: 2, url: None });
        assert_eq!(r.place("new", Placement::LeastLoaded).unwrap().key(), "31");
        assert_eq!(r.directory(), [("31".to_string(), "http://b".to_string())].into_iter().collect());
    }

    #[test]
    fn own_writes_are_not_undone_by_older_records_read_back() {
        let r = Registry::distributed(3, 3);
        let at = |c, s| Some(Slot { cluster: c, subscriber: s });
        r.commit_local(&Update { client_id: "c1".into(), slot: at(1, 1) });
        r.commit_local(&Update { client_id: "c1".into(), slot: None });
        // The log gives back the first write while the second is still on its way.
        r.apply(&Update { client_id: "c1".into(), slot: at(1, 1) });
        assert!(r.lookup("c1").is_none(), "the unsubscribe answered already stays visible");
        r.apply(&Update { client_id: "c1".into(), slot: None });
        // Read back: later writes from elsewhere apply again.
        r.apply(&Update { client_id: "c1".into(), slot: at(2, 2) });
        assert_eq!(r.lookup("c1").unwrap().0, Slot { cluster: 2, subscriber: 2 });
    }

    #[tokio::test]
    async fn a_stream_request_waits_for_its_client_to_appear() {
        let r = Arc::new(Registry::new(3, 3));
        let r2 = r.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            r2.apply(&Update { client_id: "late".into(), slot: Some(Slot { cluster: 1, subscriber: 2 }) });
        });
        let got = r.wait_for("late", Duration::from_secs(5), |s| s.subscriber == 2).await;
        assert_eq!(got.unwrap().0, Slot { cluster: 1, subscriber: 2 });
        assert!(r.wait_for("never", Duration::from_millis(20), |_| true).await.is_none());
    }

    #[test]
    fn keys_parse() {
        assert_eq!(parse_key("11"), Ok((1, 1)));
        assert_eq!(parse_key("23"), Ok((2, 3)));
        assert_eq!(parse_key("12.3"), Ok((12, 3)));
        assert!(parse_key("1").is_err());
        assert!(parse_key("ab").is_err());
    }
}
