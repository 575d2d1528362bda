//! Client streams: `GET /stream/{client_id}` (Server-Sent Events) and `GET /ws/{client_id}`
//! (WebSocket), one message per window, the latest window first.
//!
//! Both write the bytes framed once per window by the subscriber. A stream ends when the client
//! unsubscribes or moves, when it falls too far behind (dropped and counted), or at shutdown after
//! the last window is delivered.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::stages::subscriber::{Frame, Hub};

use super::ApiError;
use super::api::ApiState;

/// A comment line keeps idle proxies from closing an SSE stream between windows.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Counts a connection in its subscriber's gauge for as long as it lives.
struct ConnGuard(Arc<Hub>);

impl ConnGuard {
    fn new(hub: Arc<Hub>) -> Self {
        hub.connected.increment(1.0);
        Self(hub)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connected.decrement(1.0);
    }
}

/// One client's position in its subscriber's stream.
struct Conn {
    hub: Arc<Hub>,
    rx: tokio::sync::broadcast::Receiver<Arc<Frame>>,
    first: Option<Arc<Frame>>,
    /// Last window sent: nothing at or before it is sent again.
    last: i64,
    client: CancellationToken,
    shutdown: CancellationToken,
    _guard: ConnGuard,
}

enum Next {
    Frame(Arc<Frame>),
    Keepalive,
    End(&'static str),
}

impl Conn {
    async fn next(&mut self) -> Next {
        if let Some(f) = self.first.take() {
            self.last = f.window_start;
            return Next::Frame(f);
        }
        loop {
            tokio::select! {
                biased;
                r = self.rx.recv() => match r {
                    Ok(f) if f.window_start <= self.last => {}
                    Ok(f) => {
                        self.last = f.window_start;
                        return Next::Frame(f);
                    }
                    Err(RecvError::Lagged(n)) => {
                        self.hub.dropped.increment(1);
                        tracing::info!(subscriber = %format!("{}{}", self.hub.cluster, self.hub.id), behind = n, "dropping a client that stopped reading");
                        return Next::End("too slow");
                    }
                    Err(RecvError::Closed) => return Next::End("subscriber stopped"),
                },
                () = self.client.cancelled() => return Next::End("unsubscribed"),
                () = self.shutdown.cancelled() => return Next::End("server shutting down"),
                () = tokio::time::sleep(KEEPALIVE) => return Next::Keepalive,
            }
        }
    }
}

fn open(state: &ApiState, client_id: &str) -> Result<Conn, ApiError> {
    let (slot, client) = state.registry.lookup(client_id).ok_or_else(|| {
        ApiError::not_found(format!("client {client_id:?} is not subscribed; POST /subscribe first"))
    })?;
    let hub = state.hubs.get(&(slot.cluster, slot.subscriber)).cloned().ok_or_else(|| {
        ApiError::not_found(format!(
            "client {client_id:?} is on subscriber {} which this process does not serve",
            slot.key()
        ))
    })?;
    let (first, rx) = hub.attach();
    Ok(Conn { _guard: ConnGuard::new(hub.clone()), hub, rx, first, last: i64::MIN, client, shutdown: state.streams_shutdown.clone() })
}

/// `GET /stream/{client_id}`: Server-Sent Events, one `swarm` event per window.
pub async fn sse(State(state): State<ApiState>, Path(client_id): Path<String>) -> Result<Response, ApiError> {
    let conn = open(&state, &client_id)?;
    let body = futures::stream::unfold(Some(conn), |conn| async move {
        let mut conn = conn?;
        match conn.next().await {
            Next::Frame(f) => {
                conn.hub.delivered.increment(1);
                Some((Ok::<Bytes, std::convert::Infallible>(f.sse.clone()), Some(conn)))
            }
            Next::Keepalive => Some((Ok(Bytes::from_static(b": keepalive\n\n")), Some(conn))),
            Next::End(_) => None,
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// `GET /ws/{client_id}`: WebSocket, one text frame per window.
pub async fn ws(State(state): State<ApiState>, Path(client_id): Path<String>, upgrade: WebSocketUpgrade) -> Result<Response, ApiError> {
    let conn = open(&state, &client_id)?;
    Ok(upgrade.on_upgrade(move |socket| ws_loop(socket, conn)))
}

async fn ws_loop(mut socket: WebSocket, mut conn: Conn) {
    loop {
        tokio::select! {
            next = conn.next() => match next {
                Next::Frame(f) => {
                    let text = match Utf8Bytes::try_from(f.json.clone()) {
                        Ok(t) => t,
                        Err(_) => continue, // swarm JSON is always UTF-8
                    };
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                    conn.hub.delivered.increment(1);
                }
                Next::Keepalive => {
                    if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                        return;
                    }
                }
                Next::End(reason) => {
                    let code = if reason == "server shutting down" { 1001 } else { 1000 };
                    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))).await;
                    return;
                }
            },
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {} // clients have nothing to say; pings are answered by the library
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::subscriber::QUEUE;

    fn frame(start: i64) -> Arc<Frame> {
        Arc::new(Frame::from_json(Bytes::from(format!(r#"{{"window_start":{start}}}"#))).unwrap())
    }

    fn conn(hub: &Arc<Hub>) -> Conn {
        let (first, rx) = hub.attach();
        Conn {
            _guard: ConnGuard::new(hub.clone()),
            hub: hub.clone(),
            rx,
            first,
            last: i64::MIN,
            client: CancellationToken::new(),
            shutdown: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped_and_others_are_not_delayed() {
        let hub = Hub::new(1, 1);
        hub.publish(frame(0));
        let mut slow = conn(&hub);
        let mut fast = conn(&hub);
        assert!(matches!(slow.next().await, Next::Frame(f) if f.window_start == 0), "latest window first");
        assert!(matches!(fast.next().await, Next::Frame(f) if f.window_start == 0));
        for w in 1..=(QUEUE as i64 + 2) {
            hub.publish(frame(w * 1000));
            // The fast reader keeps up; publishing never waits for the slow one.
            assert!(matches!(fast.next().await, Next::Frame(f) if f.window_start == w * 1000));
        }
        assert!(matches!(slow.next().await, Next::End("too slow")));
    }

    #[tokio::test]
    async fn a_window_is_never_sent_twice_to_a_connection() {
        let hub = Hub::new(1, 1);
        hub.publish(frame(1000));
        let mut c = conn(&hub);
        hub.publish(frame(1000)); // a repeat (e.g. after a restart) is ignored by the hub
        hub.publish(frame(2000));
        assert!(matches!(c.next().await, Next::Frame(f) if f.window_start == 1000));
        assert!(matches!(c.next().await, Next::Frame(f) if f.window_start == 2000));
        c.client.cancel();
        assert!(matches!(c.next().await, Next::End("unsubscribed")));
    }
}
