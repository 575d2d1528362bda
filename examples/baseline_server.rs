//! The do-nothing baseline for `bench/run`: an axum server that reads the body of `POST /emoji` (and
//! `POST /emojis`) and answers 200 `{"message":"Emoji received"}`, served the same way as EmoStream's
//! ingest (`emostream::http::serve_http1`, multi-thread tokio runtime). EmoStream's request path is measured against it.
//!
//! `cargo run --release --example baseline_server -- 127.0.0.1:5101`

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;

async fn received(_body: Bytes) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"message":"Emoji received"}"#)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:5101".into());
    let _ = emostream::sys::raise_nofile_limit();
    let app = Router::new().route("/emoji", post(received)).route("/emojis", post(received));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("baseline listening on http://{}", listener.local_addr()?);
    emostream::http::serve_http1(listener, app, Default::default(), tokio_util::sync::CancellationToken::new()).await
}
