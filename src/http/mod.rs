//! The HTTP layer: the ingest API and the subscription/delivery API, as routers built from state so
//! tests can drive them without a socket.

pub mod api;
pub mod dashboard;
pub mod error;
pub mod ingest;
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
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({flag}): {e}; is another emostream running? pick another address with {flag}"))
    })
}

/// Serves `app` until `shutdown`, finishing requests in flight.
///
/// # Errors
/// When accepting fails.
pub async fn serve(listener: TcpListener, app: axum::Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}
