//! The one error shape every endpoint answers with: a status and `{"error": "..."}`.

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Fields answered beside `error`, e.g. where a misdirected client should connect instead.
    pub fields: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), fields: Vec::new() }
    }

    /// Adds a field to the JSON answer.
    #[must_use]
    pub fn with_field(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.fields.push((name, value.into()));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        for (name, value) in self.fields {
            body[name] = value.into();
        }
        let body = body.to_string();
        let mut r = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

/// Whether `e`, or an error it wraps, is a request body that stopped arriving (`--body-timeout`).
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// 408 for a request body that stopped arriving.
pub fn body_timeout() -> ApiError {
    ApiError::new(StatusCode::REQUEST_TIMEOUT, "the request body stopped arriving before it was complete (see --body-timeout)")
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        if is_body_timeout(&r) {
            return body_timeout();
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(status, "request body is over the size limit (see --max-body / --max-batch-body)")
        } else {
            Self::new(status, format!("could not read the request body: {}", r.body_text()))
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        if is_body_timeout(&r) {
            return body_timeout();
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(status, "request body is over the size limit");
        }
        let msg = match &r {
            JsonRejection::MissingJsonContentType(_) => "send the body as JSON with `Content-Type: application/json`".to_string(),
            _ => format!("invalid JSON body: {}", r.body_text()),
        };
        Self::new(status, msg)
    }
}

/// Gives every error answer of a router the `{"error": ...}` shape: the rejections of axum's own
/// extractors (`Path`, `Query`, `WebSocketUpgrade`) and of tower-http's layers (the body limit's 413)
/// come as text/plain or empty. The text they carry becomes the message; headers such as `Allow`,
/// `Retry-After` or `Sec-WebSocket-Version` are kept. Answers already in JSON pass as they are.
pub async fn json_errors(r: Response) -> Response {
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let is_json = r.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return r;
    }
    let (parts, body) = r.into_parts();
    // Rejection texts are short and in memory; anything longer is not worth repeating.
    let text = axum::body::to_bytes(body, 1024).await.map(|b| String::from_utf8_lossy(&b).trim().to_string()).unwrap_or_default();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request body is over the size limit of this endpoint".to_string(),
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_lowercase(),
        _ => text,
    };
    let mut out = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

/// A JSON extractor whose rejections use the `{"error": ...}` shape.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
