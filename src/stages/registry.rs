//! Registry: which client is subscribed to which subscriber (cluster id, subscriber id).
//!
//! Embedded, this map is the registry. Distributed, every subscriber process holds one, materialized
//! from the compacted `emostream_subscriptions` topic with [`Registry::apply`]. Either way no stage asks
//! another over HTTP per message.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::core::event::MAX_CLIENT_ID_BYTES;

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
}

/// A change to the registry, as carried by the compacted topic (value `None` = unsubscribed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub client_id: String,
    pub slot: Option<Slot>,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<String, (Slot, CancellationToken)>,
    by_slot: BTreeMap<(u32, u32), BTreeSet<String>>,
}

/// The subscription map. `std::sync::Mutex`: touched on subscribe, unsubscribe and stream open,
/// never on the per-window delivery path and never across an await.
#[derive(Debug)]
pub struct Registry {
    clusters: u32,
    subscribers: u32,
    state: Mutex<State>,
}

impl Registry {
    pub fn new(clusters: u32, subscribers: u32) -> Self {
        Self { clusters, subscribers, state: Mutex::new(State::default()) }
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

    /// Subscribes (or moves) a client. Moving ends its open streams on the old subscriber.
    ///
    /// # Errors
    /// [`RegistryError`] when the id or placement is invalid; nothing changes then.
    pub fn subscribe(&self, client_id: &str, placement: Placement) -> Result<Slot, RegistryError> {
        self.validate(client_id, placement)?;
        let mut st = self.state.lock().expect("registry lock poisoned");
        let slot = match placement {
            Placement::Exact { cluster, subscriber } => Slot { cluster, subscriber },
            Placement::LeastLoaded => match st.clients.get(client_id) {
                Some((slot, _)) => *slot, // already placed: stay
                None => self.least_loaded(&st),
            },
        };
        Self::set(&mut st, client_id, Some(slot));
        Ok(slot)
    }

    /// Removes a client and ends its open streams. Returns its slot if it was subscribed.
    pub fn unsubscribe(&self, client_id: &str) -> Option<Slot> {
        let mut st = self.state.lock().expect("registry lock poisoned");
        Self::set(&mut st, client_id, None)
    }

    /// Applies an update read from the subscriptions topic.
    pub fn apply(&self, update: &Update) {
        let mut st = self.state.lock().expect("registry lock poisoned");
        Self::set(&mut st, &update.client_id, update.slot);
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

    fn least_loaded(&self, st: &State) -> Slot {
        let mut best = Slot { cluster: 1, subscriber: 1 };
        let mut best_n = usize::MAX;
        for subscriber in 1..=self.subscribers {
            for cluster in 1..=self.clusters {
                let n = st.by_slot.get(&(cluster, subscriber)).map_or(0, BTreeSet::len);
                if n < best_n {
                    best = Slot { cluster, subscriber };
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
    fn keys_parse() {
        assert_eq!(parse_key("11"), Ok((1, 1)));
        assert_eq!(parse_key("23"), Ok((2, 3)));
        assert_eq!(parse_key("12.3"), Ok((12, 3)));
        assert!(parse_key("1").is_err());
        assert!(parse_key("ab").is_err());
    }
}
