//! Recent windows for `GET /windows`: a bounded history following `main_topic`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::core::window::Recent;
use crate::log::{ConsumerConfig, Log, LogError, Polled, StartAt, topics};

use super::subscriber::Frame;

/// `std::sync::Mutex`: pushes every window and short reads; never held across an await.
#[derive(Debug)]
pub struct History {
    frames: Mutex<Recent<Arc<Frame>>>,
}

impl History {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { frames: Mutex::new(Recent::new(capacity)) })
    }

    pub fn push(&self, f: Arc<Frame>) {
        let mut frames = self.frames.lock().expect("history lock poisoned");
        if frames.last().is_some_and(|l| l.window_start >= f.window_start) {
            return;
        }
        frames.push(f);
    }

    /// Windows with `from <= window_start < to`, the newest `limit`, oldest first.
    pub fn query(&self, from: Option<i64>, to: Option<i64>, limit: usize) -> Vec<Arc<Frame>> {
        let frames = self.frames.lock().expect("history lock poisoned");
        let mut out: Vec<_> = frames
            .iter()
            .rev()
            .filter(|f| from.is_none_or(|from| f.window_start >= from) && to.is_none_or(|to| f.window_start < to))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

/// Follows `main_topic` into the history until `shutdown`.
///
/// # Errors
/// When the log fails.
pub async fn run(log: Arc<dyn Log>, history: Arc<History>, capacity: u64, shutdown: CancellationToken) -> Result<(), LogError> {
    let mut consumer = log.consumer(ConsumerConfig::new(topics::MAIN, None, StartAt::Tail(capacity))).await?;
    loop {
        let polled = tokio::select! {
            p = consumer.poll(Duration::from_millis(500)) => p?,
            () = shutdown.cancelled() => return Ok(()),
        };
        if let Polled::Records(records) = polled {
            for r in records {
                if let Ok(f) = Frame::from_json(r.payload) {
                    history.push(Arc::new(f));
                }
            }
        }
    }
}
