//! Subscriber N.M: follows cluster N's topic and pushes each swarm to the client streams it holds.
//!
//! A window is framed once ([`Frame`]: the JSON and its SSE form) and the same bytes go to every
//! connection through a `broadcast` ring. The ring is each connection's small bounded queue: a
//! connection that falls more than [`QUEUE`] windows behind is dropped and counted, and nobody else
//! waits for it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use metrics::{Counter, Gauge};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::log::{ConsumerConfig, Log, LogError, Polled, StartAt, topics};
use crate::telemetry;

/// Windows a connection may be behind before it is dropped.
pub const QUEUE: usize = 8;

/// One window, serialized once for every client.
#[derive(Debug)]
pub struct Frame {
    pub window_start: i64,
    /// The swarm message JSON (WebSocket text frame, `/windows`).
    pub json: Bytes,
    /// `event: swarm\nid: ..\ndata: <json>\n\n`.
    pub sse: Bytes,
}

#[derive(serde::Deserialize)]
struct Head {
    window_start: i64,
}

impl Frame {
    /// Frames a swarm message.
    ///
    /// # Errors
    /// When the payload is not a swarm message.
    pub fn from_json(json: Bytes) -> Result<Self, serde_json::Error> {
        let head: Head = serde_json::from_slice(&json)?;
        let mut sse = BytesMut::with_capacity(json.len() + 48);
        sse.put_slice(b"event: swarm\nid: ");
        sse.put_slice(head.window_start.to_string().as_bytes());
        sse.put_slice(b"\ndata: ");
        sse.put_slice(&json);
        sse.put_slice(b"\n\n");
        Ok(Self { window_start: head.window_start, json, sse: sse.freeze() })
    }
}

/// A subscriber's fan-out point. Shared by the delivery task and the HTTP handlers.
#[derive(Debug)]
pub struct Hub {
    pub cluster: u32,
    pub id: u32,
    tx: broadcast::Sender<Arc<Frame>>,
    /// Latest window, sent first to a new connection. `std::sync::Mutex`: held for a pointer copy,
    /// never across an await.
    latest: Mutex<Option<Arc<Frame>>>,
    pub connected: Gauge,
    pub dropped: Counter,
    pub delivered: Counter,
}

impl Hub {
    pub fn new(cluster: u32, id: u32) -> Arc<Self> {
        let key = format!("{cluster}{id}");
        let (tx, _) = broadcast::channel(QUEUE);
        Arc::new(Self {
            cluster,
            id,
            tx,
            latest: Mutex::new(None),
            connected: metrics::gauge!(telemetry::CONNECTED_CLIENTS, "subscriber" => key.clone()),
            dropped: metrics::counter!(telemetry::SLOW_CLIENTS_DROPPED, "subscriber" => key.clone()),
            delivered: metrics::counter!(telemetry::MESSAGES_DELIVERED, "subscriber" => key),
        })
    }

    /// The latest window and a receiver for the following ones, taken together so none is missed.
    pub fn attach(&self) -> (Option<Arc<Frame>>, broadcast::Receiver<Arc<Frame>>) {
        let latest = self.latest.lock().expect("hub lock poisoned");
        (latest.clone(), self.tx.subscribe())
    }

    pub fn publish(&self, frame: Arc<Frame>) {
        let mut latest = self.latest.lock().expect("hub lock poisoned");
        if latest.as_ref().is_some_and(|l| l.window_start >= frame.window_start) {
            return; // a window is delivered once, in order
        }
        *latest = Some(frame.clone());
        // Sent under the lock so `attach` sees either the old latest and this send, or the new latest.
        let _ = self.tx.send(frame);
    }

    pub fn latest(&self) -> Option<Arc<Frame>> {
        self.latest.lock().expect("hub lock poisoned").clone()
    }
}

/// Follows `clusterN` into the hub until `shutdown`.
///
/// # Errors
/// When the log fails.
pub async fn run(log: Arc<dyn Log>, hub: Arc<Hub>, shutdown: CancellationToken) -> Result<(), LogError> {
    let mut consumer = log.consumer(ConsumerConfig::new(topics::cluster(hub.cluster), None, StartAt::Tail(1))).await?;
    let mut stopping = false;
    loop {
        let polled = tokio::select! {
            p = consumer.poll(Duration::from_millis(if stopping { 100 } else { 500 })) => p?,
            () = shutdown.cancelled(), if !stopping => { stopping = true; continue; }
        };
        match polled {
            Polled::Records(records) => {
                for r in records {
                    match Frame::from_json(r.payload) {
                        Ok(f) => hub.publish(Arc::new(f)),
                        Err(e) => tracing::error!(cluster = hub.cluster, offset = r.offset, error = %e, "skipping a record that is not a swarm message"),
                    }
                }
            }
            Polled::Idle if stopping => break,
            Polled::Assigned(_) | Polled::Revoked(_) | Polled::Idle => {}
        }
    }
    Ok(())
}
