//! Recent windows: a bounded ring of framed windows that a reader can follow from any point it holds.
//!
//! Two uses. Following `main_topic`, it answers `GET /windows`. Inside a subscriber's [`Hub`], it is
//! also what a reconnecting client catches up from (`Last-Event-ID`, `?after=`): taking the windows
//! after a given one and a receiver for the next ones happen under one lock, so a reader sees every
//! window once, in order, with no gap between what it replays and what it receives live.
//!
//! [`Hub`]: super::subscriber::Hub

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::core::window::Recent;
use crate::log::{ConsumerConfig, Log, LogError, Polled, StartAt, topics};

use super::subscriber::{Frame, QUEUE};

/// What a new reader gets: the windows it asked to catch up on, then a receiver for the next ones.
pub type Follow = (Vec<Arc<Frame>>, broadcast::Receiver<Arc<Frame>>);

/// `std::sync::Mutex`: held to push one window or copy a few pointers; never across an await.
#[derive(Debug)]
pub struct History {
    frames: Mutex<Recent<Arc<Frame>>>,
    /// Every new window, sent under the lock (see [`History::follow`]). Its capacity is each reader's
    /// bounded queue: a reader more than [`QUEUE`] windows behind gets `Lagged` and is dropped.
    tx: broadcast::Sender<Arc<Frame>>,
}

impl History {
    pub fn new(capacity: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(QUEUE);
        Arc::new(Self { frames: Mutex::new(Recent::new(capacity)), tx })
    }

    /// Keeps a window and sends it to every follower. Returns false (and does nothing) for a window at
    /// or before the newest one held: each window is kept and sent once, in order.
    pub fn push(&self, f: Arc<Frame>) -> bool {
        let mut frames = self.frames.lock().expect("history lock poisoned");
        if frames.last().is_some_and(|l| l.window_start >= f.window_start) {
            return false;
        }
        frames.push(f.clone());
        // Sent under the lock so `follow` sees either the ring without this window and then receives
        // it, or the ring with it and never receives it.
        let _ = self.tx.send(f);
        true
    }

    /// The windows a new reader starts with, and a receiver for the following ones, taken together so
    /// none is missed or repeated: with `after = None` the latest window (if any), with `Some(w)` every
    /// window held that starts after `w` (a reconnecting client's `Last-Event-ID`).
    pub fn follow(&self, after: Option<i64>) -> Follow {
        let frames = self.frames.lock().expect("history lock poisoned");
        let first: Vec<Arc<Frame>> = match after {
            None => frames.last().cloned().into_iter().collect(),
            Some(w) => {
                let mut newer: Vec<_> = frames.iter().rev().take_while(|f| f.window_start > w).cloned().collect();
                newer.reverse();
                newer
            }
        };
        (first, self.tx.subscribe())
    }

    /// The newest window held.
    pub fn latest(&self) -> Option<Arc<Frame>> {
        self.frames.lock().expect("history lock poisoned").last().cloned()
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(start: i64) -> Arc<Frame> {
        Arc::new(Frame::from_json(Bytes::from(format!(r#"{{"window_start":{start}}}"#))).unwrap())
    }

    fn starts(frames: &[Arc<Frame>]) -> Vec<i64> {
        frames.iter().map(|f| f.window_start).collect()
    }

    #[test]
    fn follow_replays_what_comes_after_the_given_window() {
        let h = History::new(4);
        for w in 1..=6 {
            assert!(h.push(frame(w * 10)));
        }
        assert!(!h.push(frame(60)), "a repeat is not kept twice");
        assert_eq!(starts(&h.follow(None).0), vec![60], "a new reader starts at the latest");
        assert_eq!(starts(&h.follow(Some(40)).0), vec![50, 60]);
        assert_eq!(starts(&h.follow(Some(60)).0), Vec::<i64>::new(), "up to date: nothing to replay");
        assert_eq!(starts(&h.follow(Some(0)).0), vec![30, 40, 50, 60], "older than the ring: what it holds");
    }

    #[tokio::test]
    async fn a_follower_receives_each_later_window_once() {
        let h = History::new(4);
        h.push(frame(10));
        let (first, mut rx) = h.follow(Some(0));
        h.push(frame(20));
        assert_eq!(starts(&first), vec![10]);
        assert_eq!(rx.recv().await.unwrap().window_start, 20);
        assert!(rx.try_recv().is_err());
    }
}
