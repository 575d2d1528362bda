//! The subscription and delivery API: `/subscribe`, `/unsubscribe`, `/subscriptions`, the client
//! streams, `/windows`, `/stats`, `/metrics`, `/healthz`.
//!
//! Embedded, one process serves all of it ([`app`]). Distributed, the `registry` process serves the
//! subscription half ([`registry_app`]) and writes every change to the subscriptions topic before it
//! answers; each `subscriber` process serves its own clients' streams ([`subscriber_app`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::log::Log;
use crate::stages::history::History;
use crate::stages::registry::{Entry, Placement, Registry, RegistryError, Slot, Update, parse_key};
use crate::stages::subscriber::Hub;

use super::ApiError;
use super::error::Json;
use super::stream;

/// Shared by every API request. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<Registry>,
    /// The subscribers this process serves, by (cluster, subscriber).
    pub hubs: Arc<HashMap<(u32, u32), Arc<Hub>>>,
    pub history: Arc<History>,
    pub prometheus: PrometheusHandle,
    /// Ends every client stream (after the last window) at shutdown.
    pub streams_shutdown: CancellationToken,
    /// Window length, when this process knows it (the registry and subscribers learn it from the
    /// windows they see).
    pub window_ms: Option<i64>,
    /// Where clients send emojis, for the dashboard.
    pub ingest_url: String,
    /// The accepted emojis, for the dashboard's send buttons.
    pub emojis: Vec<String>,
    /// Base URL of this API as bound (`http://127.0.0.1:5002`): the stream URLs given to clients when
    /// the request carries no `Host`.
    pub api_url: String,
    /// Distributed registry: where subscriptions are written before they are answered. `None`: the
    /// registry lives in this process only (embedded).
    pub subscriptions_log: Option<Arc<dyn Log>>,
    /// How long a stream request waits for its client to show up in the registry (distributed: the
    /// registry's write takes a moment to reach the subscriber).
    pub placement_wait: Duration,
}

/// The embedded API: subscriptions, streams and the dashboard in one router.
pub fn app(state: ApiState) -> Router {
    common(subscription_routes(delivery_routes(Router::new())).merge(crate::http::dashboard::routes()), state)
}

/// The `registry` process's API: subscribe, unsubscribe, list, and where each subscriber is.
pub fn registry_app(state: ApiState) -> Router {
    common(subscription_routes(Router::new()).route("/subscribers", get(subscribers)), state)
}

/// A `subscriber` process's API: its clients' streams (and a read-only view of the registry).
pub fn subscriber_app(state: ApiState) -> Router {
    common(delivery_routes(Router::new()).route("/subscriptions", get(subscriptions)), state)
}

fn subscription_routes(r: Router<ApiState>) -> Router<ApiState> {
    r.route("/subscribe", post(subscribe)).route("/unsubscribe", post(unsubscribe)).route("/subscriptions", get(subscriptions))
}

fn delivery_routes(r: Router<ApiState>) -> Router<ApiState> {
    r.route("/stream/{client_id}", get(stream::sse)).route("/ws/{client_id}", get(stream::ws))
}

fn common(r: Router<ApiState>, state: ApiState) -> Router {
    r.route("/windows", get(windows))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .fallback(super::ingest::not_found)
        .method_not_allowed_fallback(super::ingest::method_not_allowed)
        // A declared body over it is refused before it is read; an undeclared one is cut at it.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(16 * 1024))
        .layer(axum::middleware::map_response(super::error::json_errors))
        .with_state(state)
}

/// An id given as a number or as a numeric string (the original sent strings).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Id {
    Num(u32),
    Text(String),
}

impl Id {
    fn get(&self, field: &str) -> Result<u32, ApiError> {
        match self {
            Id::Num(n) => Ok(*n),
            Id::Text(s) => {
                s.trim().parse().map_err(|_| ApiError::bad_request(format!("field `{field}` must be a positive integer, got {s:?}")))
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct SubscribeBody {
    client_id: Option<String>,
    subscription_key: Option<String>,
    cluster_id: Option<Id>,
    subscriber_id: Option<Id>,
}

impl SubscribeBody {
    fn client_id(&self) -> Result<&str, ApiError> {
        self.client_id.as_deref().ok_or_else(|| ApiError::bad_request("missing field `client_id`"))
    }

    fn placement(&self) -> Result<Placement, ApiError> {
        match (&self.subscription_key, &self.cluster_id, &self.subscriber_id) {
            (Some(k), None, None) => {
                let (cluster, subscriber) = parse_key(k).map_err(ApiError::bad_request)?;
                Ok(Placement::Exact { cluster, subscriber })
            }
            (None, Some(c), Some(s)) => Ok(Placement::Exact { cluster: c.get("cluster_id")?, subscriber: s.get("subscriber_id")? }),
            (None, None, None) => Ok(Placement::LeastLoaded),
            (None, Some(_), None) => Err(ApiError::bad_request("field `subscriber_id` is required with `cluster_id`")),
            (None, None, Some(_)) => Err(ApiError::bad_request("field `cluster_id` is required with `subscriber_id`")),
            (Some(_), _, _) => Err(ApiError::bad_request("give either `subscription_key` or `cluster_id` and `subscriber_id`, not both")),
        }
    }
}

#[derive(Debug, Serialize)]
struct Subscribed {
    client_id: String,
    cluster_id: u32,
    subscriber_id: u32,
    subscription_key: String,
    stream_path: String,
    ws_path: String,
    /// Absolute URLs at the subscriber that holds the client: where to connect.
    stream_url: String,
    ws_url: String,
    subscriptions: std::collections::BTreeMap<String, Vec<String>>,
}

pub(crate) fn paths(client_id: &str) -> (String, String) {
    let enc = percent_encode(client_id);
    (format!("/stream/{enc}"), format!("/ws/{enc}"))
}

/// The absolute stream and WebSocket URLs of a client at a subscriber's base URL.
pub(crate) fn urls(base: &str, client_id: &str) -> (String, String) {
    let (stream_path, ws_path) = paths(client_id);
    let base = base.trim_end_matches('/');
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        format!("ws://{}", base.strip_prefix("http://").unwrap_or(base))
    };
    (format!("{base}{stream_path}"), format!("{ws_base}{ws_path}"))
}

/// Where the subscriber holding `slot` serves: its announced URL (distributed), or this API as the
/// client reached it (embedded).
fn base_url(s: &ApiState, headers: &HeaderMap, slot: Slot) -> String {
    if let Some(url) = s.registry.url(slot) {
        return url;
    }
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if !host.is_empty() => format!("http://{host}"),
        _ => s.api_url.clone(),
    }
}

fn registry_error(e: RegistryError) -> ApiError {
    if e.is_unavailable() { ApiError::unavailable(e.to_string()) } else { ApiError::bad_request(e.to_string()) }
}

/// Distributed: writes a change to the subscriptions topic, then applies it here (so this answer and
/// the next ones reflect it). Embedded: applies it.
async fn record(s: &ApiState, update: Update) -> Result<Option<Slot>, ApiError> {
    let Some(log) = &s.subscriptions_log else {
        return Ok(s.registry.assign(&update.client_id, update.slot));
    };
    log.append(vec![Entry::Client(update.clone()).to_output()]).await.map_err(|e| {
        tracing::warn!(client_id = %update.client_id, error = %e, "cannot write a subscription change to the log");
        ApiError::unavailable(format!("cannot record the change in the log: {e}"))
    })?;
    Ok(s.registry.commit_local(&update))
}

/// Percent-encodes everything but unreserved characters, so any client id makes a valid path.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn subscribe(State(s): State<ApiState>, headers: HeaderMap, Json(body): Json<SubscribeBody>) -> Result<Response, ApiError> {
    let client_id = body.client_id()?;
    let placement = body.placement()?;
    let slot = s.registry.place(client_id, placement).map_err(registry_error)?;
    record(&s, Update { client_id: client_id.to_string(), slot: Some(slot) }).await?;
    let Slot { cluster, subscriber } = slot;
    let (stream_path, ws_path) = paths(client_id);
    let (stream_url, ws_url) = urls(&base_url(&s, &headers, slot), client_id);
    tracing::debug!(client_id, cluster, subscriber, "subscribed");
    Ok(Json(Subscribed {
        client_id: client_id.to_string(),
        cluster_id: cluster,
        subscriber_id: subscriber,
        subscription_key: Slot { cluster, subscriber }.key(),
        stream_path,
        ws_path,
        stream_url,
        ws_url,
        subscriptions: s.registry.map(),
    })
    .into_response())
}

async fn unsubscribe(State(s): State<ApiState>, Json(body): Json<SubscribeBody>) -> Result<Response, ApiError> {
    let client_id = body.client_id()?;
    let was = match s.registry.lookup(client_id) {
        Some(_) => record(&s, Update { client_id: client_id.to_string(), slot: None }).await?,
        None => None,
    };
    match was {
        Some(slot) => Ok(Json(serde_json::json!({
            "client_id": client_id,
            "unsubscribed": true,
            "subscription_key": slot.key(),
            "subscriptions": s.registry.map(),
        }))
        .into_response()),
        None => Err(ApiError::not_found(format!("client {client_id:?} is not subscribed"))),
    }
}

async fn subscriptions(State(s): State<ApiState>) -> impl IntoResponse {
    Json(s.registry.map())
}

/// `GET /subscribers`: the subscribers that announced themselves, key → base URL.
async fn subscribers(State(s): State<ApiState>) -> impl IntoResponse {
    Json(s.registry.directory())
}

#[derive(Debug, Deserialize)]
struct WindowsQuery {
    limit: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

fn query_int(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|v| v.trim().parse::<i64>().map_err(|_| ApiError::bad_request(format!("query parameter `{name}` must be an integer, got {v:?}"))))
        .transpose()
}

/// Default number of windows `GET /windows` returns.
const DEFAULT_WINDOWS: i64 = 100;

async fn windows(
    State(s): State<ApiState>,
    q: Result<Query<WindowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query_int("limit", q.limit.as_deref())?.unwrap_or(DEFAULT_WINDOWS);
    if limit < 1 {
        return Err(ApiError::bad_request(format!("query parameter `limit` must be at least 1, got {limit}")));
    }
    let from = query_int("from", q.from.as_deref())?;
    let to = query_int("to", q.to.as_deref())?;
    let frames = s.history.query(from, to, usize::try_from(limit).unwrap_or(usize::MAX));
    // The stored JSON of each window, concatenated: no re-serialization.
    let mut body = Vec::with_capacity(frames.iter().map(|f| f.json.len() + 1).sum::<usize>() + 16);
    body.extend_from_slice(b"{\"windows\":[");
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&f.json);
    }
    body.extend_from_slice(b"]}");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn stats(State(s): State<ApiState>) -> impl IntoResponse {
    let text = crate::telemetry::render(&s.prometheus);
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && (l.as_bytes().get(name.len()) == Some(&b' ') || l.as_bytes().get(name.len()) == Some(&b'{')))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Json(serde_json::json!({
        "events_accepted_total": sum(crate::telemetry::EVENTS_ACCEPTED) as u64,
        "events_rejected_total": sum(crate::telemetry::EVENTS_REJECTED) as u64,
        "windows_published_total": sum(crate::telemetry::WINDOWS_PUBLISHED) as u64,
        "messages_delivered_total": sum(crate::telemetry::MESSAGES_DELIVERED) as u64,
        "late_events_total": sum(crate::telemetry::LATE_EVENTS) as u64,
        "connected_clients": sum(crate::telemetry::CONNECTED_CLIENTS) as u64,
        "subscribed_clients": s.registry.len(),
        "clusters": s.registry.clusters(),
        "subscribers": s.registry.subscribers(),
        "window_ms": s.window_ms.or_else(|| s.history.latest().map(|f| f.window_end - f.window_start)).unwrap_or(0),
        "ingest_url": s.ingest_url,
        "emojis": s.emojis,
    }))
}

async fn metrics_text(State(s): State<ApiState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::render(&s.prometheus))
}

async fn healthz() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_encode_any_client_id() {
        assert_eq!(paths("c 1/é").0, "/stream/c%201%2F%C3%A9");
        assert_eq!(paths("c1").1, "/ws/c1");
    }

    #[test]
    fn urls_are_absolute_at_the_base() {
        assert_eq!(
            urls("http://10.0.0.7:5101/", "c 1"),
            ("http://10.0.0.7:5101/stream/c%201".into(), "ws://10.0.0.7:5101/ws/c%201".into())
        );
        assert_eq!(urls("https://live.example", "c1").1, "wss://live.example/ws/c1");
    }
}
