//! The ingest API: `POST /emoji` and `POST /emojis`.
//!
//! Each body is parsed once, straight from the request bytes; strings are borrowed, nothing is
//! allocated per event beyond the batch's own vector. A refused event changes nothing.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use metrics::Counter;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::core::emoji::EmojiSet;
use crate::core::event::{BatchError, EventError, parse_event, parse_event_array, parse_event_ndjson};
use crate::stages::ingest::{IngestHandle, Items, SubmitError};
use crate::stages::now_ms;
use crate::telemetry;

use super::ApiError;

/// Most events in one `POST /emojis`.
pub const MAX_BATCH_EVENTS: usize = 10_000;

/// Limits of the ingest API.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Body limit of `POST /emoji`, bytes.
    pub max_body: usize,
    /// Body limit of `POST /emojis`, bytes.
    pub max_batch_body: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self { max_body: 64 * 1024, max_batch_body: 4 * 1024 * 1024 }
    }
}

/// Rejection counters, one per reason, resolved once.
#[derive(Clone)]
struct Rejected {
    malformed: Counter,
    missing_field: Counter,
    wrong_type: Counter,
    unknown_emoji: Counter,
    bad_client_id: Counter,
    bad_timestamp: Counter,
    too_large: Counter,
    too_many: Counter,
}

impl Rejected {
    fn new() -> Self {
        let c = |reason: &'static str| metrics::counter!(telemetry::EVENTS_REJECTED, "reason" => reason);
        Self {
            malformed: c("malformed"),
            missing_field: c("missing_field"),
            wrong_type: c("wrong_type"),
            unknown_emoji: c("unknown_emoji"),
            bad_client_id: c("bad_client_id"),
            bad_timestamp: c("bad_timestamp"),
            too_large: c("too_large"),
            too_many: c("too_many"),
        }
    }

    fn count(&self, e: &EventError) {
        let c = match e.reason() {
            "missing_field" => &self.missing_field,
            "wrong_type" => &self.wrong_type,
            "unknown_emoji" => &self.unknown_emoji,
            "bad_client_id" => &self.bad_client_id,
            "bad_timestamp" => &self.bad_timestamp,
            _ => &self.malformed,
        };
        c.increment(1);
    }
}

/// Shared by every ingest request. Cheap to clone: handles and `Arc`s.
#[derive(Clone)]
pub struct IngestState {
    pub ingest: IngestHandle,
    pub set: EmojiSet,
    /// `None` when another port of this process serves `/metrics` (`up`: the API's).
    pub prometheus: Option<PrometheusHandle>,
    accepted: Counter,
    rejected: Arc<Rejected>,
    limits: IngestLimits,
}

impl IngestState {
    pub fn new(ingest: IngestHandle, set: EmojiSet, prometheus: PrometheusHandle) -> Self {
        Self {
            ingest,
            set,
            prometheus: Some(prometheus),
            accepted: metrics::counter!(telemetry::EVENTS_ACCEPTED),
            rejected: Arc::new(Rejected::new()),
            limits: IngestLimits::default(),
        }
    }

    /// No `/metrics` here: another port of the process serves them, and a scrape of both would
    /// count every series twice.
    pub fn without_metrics(mut self) -> Self {
        self.prometheus = None;
        self
    }
}

/// The ingest router.
pub fn app(mut state: IngestState, limits: IngestLimits) -> Router {
    state.limits = limits;
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([axum::http::Method::POST, axum::http::Method::GET])
        .allow_headers([header::CONTENT_TYPE]);
    Router::new()
        // Bodies are read with each route's own limit (below): no per-request limit layer.
        .route("/emoji", post(post_emoji))
        .route("/emojis", post(post_emojis))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(super::error::json_errors))
        .layer(cors)
        // One `Arc` clone per request instead of one per handle and counter inside the state.
        .with_state(Arc::new(state))
}

const RECEIVED: &str = r#"{"message":"Emoji received"}"#;

/// Reads a body of at most `limit` bytes: 413 over it (at once when the request declares it, before
/// reading a byte), 408 when it stops arriving (`--body-timeout`), 400 when it cannot be read.
async fn read_body(s: &IngestState, headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Response> {
    let too_large = || {
        s.rejected.too_large.increment(1);
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over the size limit of {limit} bytes (see --max-body / --max-batch-body)"),
        )
        .into_response()
    };
    // A declared `Content-Length` over the limit is refused without waiting for the body. (Read from
    // the header: the body-timeout wrapper hides the body's own size hint.)
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over = std::error::Error::source(&e).is_some_and(|c| c.is::<http_body_util::LengthLimitError>());
        if over {
            too_large()
        } else if super::error::is_body_timeout(&e) {
            s.rejected.malformed.increment(1);
            super::error::body_timeout().into_response()
        } else {
            s.rejected.malformed.increment(1);
            ApiError::bad_request(format!("could not read the request body: {e}")).into_response()
        }
    })
}

async fn post_emoji(State(s): State<Arc<IngestState>>, headers: HeaderMap, body: Body) -> Response {
    let body = match read_body(&s, &headers, body, s.limits.max_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let event = match parse_event(&body, &s.set) {
        Ok(e) => e,
        Err(e) => {
            s.rejected.count(&e);
            return ApiError::bad_request(e.to_string()).into_response();
        }
    };
    match s.ingest.submit(now_ms(), Items::One(event.emoji)).await {
        Ok(()) => {
            s.accepted.increment(1);
            ([(header::CONTENT_TYPE, "application/json")], RECEIVED).into_response()
        }
        Err(e) => submit_error(e).into_response(),
    }
}

fn submit_error(e: SubmitError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

#[derive(Serialize)]
struct ItemError {
    index: usize,
    error: String,
}

#[derive(Serialize)]
struct BatchAnswer {
    accepted: u64,
    rejected: u64,
    errors: Vec<ItemError>,
}

/// Most item errors listed in one answer; `rejected` still counts them all.
const MAX_LISTED_ERRORS: usize = 100;

async fn post_emojis(State(s): State<Arc<IngestState>>, headers: HeaderMap, body: Body) -> Response {
    let body = match read_body(&s, &headers, body, s.limits.max_batch_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson") || v.starts_with("application/jsonl"));
    let parsed =
        if ndjson { parse_event_ndjson(&body, &s.set, MAX_BATCH_EVENTS) } else { parse_event_array(&body, &s.set, MAX_BATCH_EVENTS) };
    let items = match parsed {
        Ok(items) => items,
        Err(e) => {
            match e {
                BatchError::TooMany(_) => s.rejected.too_many.increment(1),
                BatchError::Json(_) => s.rejected.malformed.increment(1),
            }
            let status = if matches!(e, BatchError::TooMany(_)) { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
            return ApiError::new(status, e.to_string()).into_response();
        }
    };
    let mut per_emoji = vec![0u32; s.set.len()];
    let mut accepted = 0u64;
    let mut errors = Vec::new();
    let mut rejected = 0u64;
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Ok(ev) => {
                per_emoji[usize::from(ev.emoji)] += 1;
                accepted += 1;
            }
            Err(e) => {
                rejected += 1;
                s.rejected.count(&e);
                if errors.len() < MAX_LISTED_ERRORS {
                    errors.push(ItemError { index, error: e.to_string() });
                }
            }
        }
    }
    if accepted > 0 {
        let many = per_emoji
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .map(|(i, n)| (u16::try_from(i).expect("emoji ids fit u16"), n))
            .collect();
        if let Err(e) = s.ingest.submit(now_ms(), Items::Many(many)).await {
            return submit_error(e).into_response();
        }
        s.accepted.increment(accepted);
    }
    super::error::Json(BatchAnswer { accepted, rejected, errors }).into_response()
}

async fn healthz() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#)
}

async fn metrics_text(State(s): State<Arc<IngestState>>) -> Result<impl IntoResponse, ApiError> {
    let Some(prometheus) = &s.prometheus else {
        return Err(ApiError::not_found(
            "this process serves its metrics once, on the API port (--api-addr): scrape http://<api-addr>/metrics",
        ));
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::render(prometheus)))
}

pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

pub(crate) async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
}
