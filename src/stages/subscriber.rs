//! Subscriber N.M: follows cluster N's topic and pushes each swarm to the client streams it holds.
//!
//! A window is framed once ([`Frame`]: the JSON and its SSE form) and the same bytes go to every
//! connection through a `broadcast` ring. The ring is each connection's small bounded queue: a
//! connection that falls more than [`QUEUE`] windows behind is dropped and counted, and nobody else
//! waits for it. The hub also keeps the last windows (its [`History`]) so a client that reconnects
//! (`Last-Event-ID`, `?after=`) first gets the windows it missed, then the live ones.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use metrics::{Counter, Gauge};
use tokio_util::sync::CancellationToken;

use crate::log::{ConsumerConfig, Log, LogError, Polled, StartAt, topics};
use crate::telemetry;

use super::history::{Follow, History};

/// Windows a connection may be behind before it is dropped. Windows come in bursts when a stage
/// upstream catches up after a stall (a broker restarted, a stage rejoining its group): with room
/// for only 8, one such burst dropped every viewer of a subscriber at once (seen in `bench/soak`, a
/// third of the viewers ended around a broker restart). The ring holds shared `Arc`s, so its size
/// costs nothing per connection.
pub const QUEUE: usize = 64;

/// One window, serialized once for every client.
#[derive(Debug)]
pub struct Frame {
    pub window_start: i64,
    pub window_end: i64,
    /// When the publisher closed the window (0 when the message does not say).
    pub closed_at: i64,
    /// The swarm message JSON (WebSocket text frame, `/windows`): a slice of `sse`, not a copy.
    pub json: Bytes,
    /// `event: swarm\nid: ..\ndata: <json>\n\n`.
    pub sse: Bytes,
}

#[derive(serde::Deserialize)]
struct Head {
    window_start: i64,
    #[serde(default)]
    window_end: i64,
    #[serde(default)]
    closed_at: i64,
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
        let at = sse.len();
        sse.put_slice(&json);
        sse.put_slice(b"\n\n");
        let sse = sse.freeze();
        Ok(Self {
            window_start: head.window_start,
            window_end: head.window_end,
            closed_at: head.closed_at,
            json: sse.slice(at..at + json.len()),
            sse,
        })
    }
}

/// A subscriber's fan-out point. Shared by the delivery task and the HTTP handlers.
#[derive(Debug)]
pub struct Hub {
    pub cluster: u32,
    pub id: u32,
    /// The last windows, and the broadcast every connection receives from.
    history: Arc<History>,
    /// Cancelled once the hub holds the windows that were in its topic when it started, so a client
    /// catching up is not sent hundreds of old windows faster than its queue allows.
    caught_up: CancellationToken,
    pub connected: Gauge,
    pub dropped: Counter,
    pub delivered: Counter,
}

impl Hub {
    /// A hub that keeps the last `replay` windows for reconnecting clients (at least one: the window
    /// a new connection gets first).
    pub fn new(cluster: u32, id: u32, replay: usize) -> Arc<Self> {
        Self::sharing(cluster, id, History::new(replay.max(1)))
    }

    /// A hub whose windows live in `history`, which other hubs following the same cluster topic may
    /// share (embedded: one copy per cluster instead of one per subscriber; each window is kept and
    /// sent once whichever hub reads it first).
    pub fn sharing(cluster: u32, id: u32, history: Arc<History>) -> Arc<Self> {
        let key = format!("{cluster}{id}");
        Arc::new(Self {
            cluster,
            id,
            history,
            caught_up: CancellationToken::new(),
            connected: metrics::gauge!(telemetry::CONNECTED_CLIENTS, "subscriber" => key.clone()),
            dropped: metrics::counter!(telemetry::SLOW_CLIENTS_DROPPED, "subscriber" => key.clone()),
            delivered: metrics::counter!(telemetry::MESSAGES_DELIVERED, "subscriber" => key),
        })
    }

    /// The windows a new connection starts with and a receiver for the following ones, taken together
    /// so none is missed or repeated: the latest window, or with `after` every held window after it.
    pub fn attach(&self, after: Option<i64>) -> Follow {
        self.history.follow(after)
    }

    /// Delivers a window to every connection; a window at or before the latest is ignored, so each is
    /// delivered once, in order.
    pub fn publish(&self, frame: Arc<Frame>) {
        self.history.push(frame);
    }

    pub fn latest(&self) -> Option<Arc<Frame>> {
        self.history.latest()
    }

    /// The windows this hub holds (a subscriber process answers `GET /windows` from them).
    pub fn history(&self) -> Arc<History> {
        self.history.clone()
    }

    /// Resolves once the hub has read what its topic held when it started (or its follower stopped).
    pub async fn caught_up(&self) {
        self.caught_up.cancelled().await;
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.is_cancelled()
    }
}

/// Follows `clusterN` into the hub until `shutdown`, starting with its last `replay` windows (so a
/// restarted subscriber can still replay what its clients missed while it was down).
///
/// # Errors
/// When the log fails.
pub async fn run(log: Arc<dyn Log>, hub: Arc<Hub>, replay: u64, shutdown: CancellationToken) -> Result<(), LogError> {
    let _caught_up = hub.caught_up.clone().drop_guard();
    let started = super::now_ms();
    let mut consumer = log.consumer(ConsumerConfig::new(topics::cluster(hub.cluster), None, StartAt::Tail(replay.max(1)))).await?;
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
                        Ok(f) => {
                            // A window closed after this follower started: everything before it was read.
                            if f.closed_at >= started {
                                hub.caught_up.cancel();
                            }
                            hub.publish(Arc::new(f));
                        }
                        Err(e) => {
                            tracing::error!(cluster = hub.cluster, offset = r.offset, error = %e, "skipping a record that is not a swarm message")
                        }
                    }
                }
            }
            Polled::Idle if stopping => break,
            // Nothing more within a poll: what the topic held is read.
            Polled::Idle => hub.caught_up.cancel(),
            Polled::Assigned(_) | Polled::Revoked(_) => {}
        }
    }
    Ok(())
}
