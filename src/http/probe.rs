//! `/livez` and `/readyz`, for a load balancer or an orchestrator.
//!
//! Live: the process answers HTTP (its event loop runs). Ready: it should get traffic: every stage
//! runs, the log answers, and it is not shutting down. From SIGTERM on it is not ready, for
//! `--drain-delay` before it stops taking requests, so that a load balancer polling `/readyz` moves
//! traffic away first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::log::Log;

/// How long `/readyz` waits for the log to answer before it says the log does not.
const LOG_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` looks at.
pub struct Readiness {
    draining: AtomicBool,
    /// Cancelled when a stage of this process failed.
    failed: CancellationToken,
    log: std::sync::OnceLock<Arc<dyn Log>>,
}

impl Readiness {
    pub fn new(failed: CancellationToken) -> Arc<Self> {
        Arc::new(Self { draining: AtomicBool::new(false), failed, log: std::sync::OnceLock::new() })
    }

    /// The log whose reachability readiness includes (the first one given counts).
    pub fn watch_log(&self, log: Arc<dyn Log>) {
        let _ = self.log.set(log);
    }

    /// From now on not ready: the process is shutting down.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Why this process should not get traffic now; empty when ready.
    pub async fn reasons(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.draining.load(Ordering::Acquire) {
            why.push("shutting down (SIGTERM or Ctrl-C received): draining before it stops".to_string());
        }
        if self.failed.is_cancelled() {
            why.push("a stage of this process failed; it is stopping (see its log)".to_string());
        }
        if let Some(log) = self.log.get() {
            match tokio::time::timeout(LOG_PING_TIMEOUT, log.ping()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => why.push(format!("the log does not answer: {e}")),
                Err(_) => why.push(format!("the log did not answer within {LOG_PING_TIMEOUT:?} ({})", log.describe())),
            }
        }
        why
    }
}

/// `GET /livez` and `GET /readyz`, to merge into a listener's router.
pub fn routes(readiness: Arc<Readiness>) -> Router {
    Router::new().route("/livez", get(livez)).route("/readyz", get(readyz)).with_state(readiness)
}

async fn livez() -> impl IntoResponse {
    Json(json!({"status": "live"}))
}

async fn readyz(State(r): State<Arc<Readiness>>) -> impl IntoResponse {
    let reasons = r.reasons().await;
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready", "reasons": reasons})))
    }
}
