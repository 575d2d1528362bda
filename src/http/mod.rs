//! The HTTP layer: the ingest API and the subscription/delivery API, as routers built from state so
//! tests can drive them without a socket.

pub mod api;
pub mod dashboard;
pub mod error;
pub mod ingest;
pub mod probe;
pub mod stream;

pub use error::ApiError;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;

/// Binds `addr`, naming the flag in the error.
///
/// # Errors
/// When the address is taken or not allowed.
pub async fn bind(addr: SocketAddr, flag: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} ({flag}): {e}; is another emostream running? pick another address with {flag}"),
        )
    })
}

/// Serves `app` until `shutdown`, finishing requests in flight.
///
/// # Errors
/// When accepting fails.
pub async fn serve(listener: TcpListener, app: axum::Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// What one connection may hold, and how many connections a listener holds: the limits that keep
/// any single client (authenticated or not) from growing the process without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// A request body that brings nothing for this long is answered 408 (`--body-timeout`).
    pub body_timeout: Duration,
    /// A socket that accepts no byte for this long is closed (`--write-timeout`): a viewer that stopped
    /// reading, a client that never reads its answers.
    pub write_timeout: Duration,
    /// Most connections this listener holds at once (`--max-connections`); `None`: from the open-files
    /// limit ([`auto_max_connections`]).
    pub max_connections: Option<usize>,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self { body_timeout: Duration::from_secs(10), write_timeout: Duration::from_secs(30), max_connections: None }
    }
}

impl ServeLimits {
    /// `max_connections`, or the default from the open-files limit.
    pub fn connections(&self) -> usize {
        self.max_connections.unwrap_or_else(auto_max_connections)
    }
}

/// The default `--max-connections` of a listener: half the open-files limit, less what the refused
/// connections and the process's own files use, so that a process with two listeners (`up`) reaches
/// its connection limits, each answered clearly, before it runs out of file descriptors.
pub fn auto_max_connections() -> usize {
    let soft = crate::sys::nofile_limit().unwrap_or(1024);
    let per_listener = usize::try_from(soft / 2).unwrap_or(usize::MAX);
    per_listener.saturating_sub(REFUSING + 64).max(16)
}

/// Longest a request head may take to arrive.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request head (request line and headers) and most bytes read ahead per connection. Hyper's
/// default is about 400 KiB, which a client could fill with one slow, huge header on every
/// connection; browsers and the clients of this API send well under 8 KiB. Over it hyper answers 431
/// (or 414 for a long URI) itself.
const MAX_BUF: usize = 16 * 1024;

/// Connections past `--max-connections` that are answered 503 at once; past these, a new
/// connection is closed without an answer (each answered one costs a socket and a small task).
const REFUSING: usize = 64;

/// Longest a refused connection is kept to read its request and answer 503.
const REFUSE_WAIT: Duration = Duration::from_secs(2);

/// Serves `app` over HTTP/1.1 only (with upgrades, for WebSocket) until `shutdown`, then waits for
/// open connections to finish. Used for every API, which holds one long-lived stream per viewer: a
/// plain HTTP/1 connection is smaller than `axum::serve`'s HTTP/1-or-2 one.
///
/// Every connection is bounded by `limits`: its request bodies time out when they stop arriving, its
/// socket is closed when it accepts nothing for `write_timeout`, and at most
/// [`ServeLimits::connections`] are open at once; past that a new connection is answered 503 with
/// `Retry-After` and closed, and a warning names the flag.
///
/// Hyper answers a request it cannot parse itself (400 for a malformed request line, 414 for a URI
/// too long, 431 for headers over [`MAX_BUF`]) with an empty body: hyper 1 has no hook for that
/// answer, so those three are the only 4xx without a JSON `{"error": ...}`.
///
/// # Errors
/// Never for a single bad connection (logged at debug); only when the listener fails.
pub async fn serve_http1(
    listener: TcpListener,
    app: axum::Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(limits.body_timeout));
    let local = listener.local_addr()?;
    let max = limits.connections();
    let open = Arc::new(Semaphore::new(max));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let mut full_warned: Option<tokio::time::Instant> = None;
    let tracker = tokio_util::task::TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_BUF);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if full_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                full_warned = Some(tokio::time::Instant::now());
                tracing::warn!(
                    listener = %local,
                    %peer,
                    max_connections = max,
                    "connection limit reached: new connections are answered 503 until some close (raise it with --max-connections)"
                );
            }
            if let Ok(p) = refusing.clone().try_acquire_owned() {
                tracker.spawn(refuse(stream, max, p));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(write_timeout(stream, limits.write_timeout));
        let svc = TowerToHyperService::new(app.clone());
        let mut conn = builder.serve_connection(io, svc).with_upgrades();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let result = tokio::select! {
                r = &mut conn => r,
                () = stop.cancelled() => {
                    // Finish the response in flight (streams end at shutdown), then close.
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    Ok(())
}

/// A socket whose writes fail with `TimedOut` once one has waited `timeout` for room: hyper and the
/// WebSocket library then close the connection, and whatever it buffered is freed. Upgraded
/// connections (WebSocket) keep it. Reads have no timeout: a viewer says nothing for hours.
fn write_timeout(stream: TcpStream, timeout: Duration) -> Pin<Box<TimeoutStream<TcpStream>>> {
    let mut s = TimeoutStream::new(stream);
    s.set_write_timeout(Some(timeout));
    Box::pin(s)
}

/// Answers one request on a connection over the limit with 503, `Retry-After` and
/// `Connection: close`, waiting at most [`REFUSE_WAIT`] for it.
async fn refuse(stream: TcpStream, max: usize, _permit: tokio::sync::OwnedSemaphorePermit) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let svc = hyper::service::service_fn(move |_req| async move {
        let mut r = ApiError::unavailable(format!(
            "too many connections: this listener holds its limit of {max} (--max-connections); retry shortly"
        ))
        .into_response();
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, std::convert::Infallible>(r)
    });
    let io = TokioIo::new(write_timeout(stream, REFUSE_WAIT));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSE_WAIT)
        .max_buf_size(MAX_BUF)
        .keep_alive(false)
        .serve_connection(io, svc);
    let _ = tokio::time::timeout(REFUSE_WAIT * 2, conn).await;
}
