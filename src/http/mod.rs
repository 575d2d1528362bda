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

use tokio::net::TcpListener;
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

/// Serves `app` over HTTP/1.1 only (with upgrades, for WebSocket) until `shutdown`, then waits for
/// open connections to finish. Used for the API, which holds one long-lived stream per viewer: a plain
/// HTTP/1 connection is smaller than `axum::serve`'s HTTP/1-or-2 one.
///
/// # Errors
/// Never for a single bad connection (logged at debug); only when the listener fails.
pub async fn serve_http1(listener: TcpListener, app: axum::Router, shutdown: CancellationToken) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let tracker = tokio_util::task::TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(30));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let mut conn = builder.serve_connection(TokioIo::new(stream), svc).with_upgrades();
        let stop = shutdown.clone();
        tracker.spawn(async move {
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
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait()).await;
    Ok(())
}
