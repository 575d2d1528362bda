//! Runs a process's tasks under one supervisor, with ordered shutdown.
//!
//! Any task's error or panic starts an orderly shutdown of the rest. Shutdown runs step by step, in
//! the order the steps were opened: in the whole pipeline, ingest stops taking requests and appends
//! what it acknowledged, the aggregator emits every window it holds, the publisher publishes them,
//! clusters and subscribers deliver them, and only then do client streams close. Each step has a
//! bounded wait.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http;
use crate::log::LogError;

/// Why a process stopped badly, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("task `{0}` failed; see the log above for why")]
    TaskFailed(String),
}

/// A named task and the token that asks it to stop.
struct Task {
    name: String,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// Spawns a process's tasks so that a failure of any of them is reported and stops the rest.
pub struct Supervisor {
    failed: CancellationToken,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    steps: Vec<Vec<Task>>,
    readiness: Arc<http::probe::Readiness>,
    /// How long `/readyz` says "not ready" after the signal before the tasks stop.
    drain_delay: Duration,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        let failed = CancellationToken::new();
        let readiness = http::probe::Readiness::new(failed.clone());
        Self { failed, failures: Arc::default(), steps: Vec::new(), readiness, drain_delay: Duration::ZERO }
    }

    /// What this process's `/readyz` answers from.
    pub fn readiness(&self) -> Arc<http::probe::Readiness> {
        self.readiness.clone()
    }

    /// After the shutdown signal, stays up (not ready) this long before stopping.
    pub fn set_drain_delay(&mut self, delay: Duration) {
        self.drain_delay = delay;
    }

    /// Starts a new shutdown step: tasks spawned after this stop after the earlier ones finished.
    pub fn step(&mut self) {
        self.steps.push(Vec::new());
    }

    /// Spawns a task of the current step.
    pub fn spawn<F, Fut, E>(&mut self, name: impl Into<String>, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        if self.steps.is_empty() {
            self.step();
        }
        let name = name.into();
        let stop = CancellationToken::new();
        let fut = f(stop.clone());
        let failed = self.failed.clone();
        let failures = self.failures.clone();
        let task_name = name.clone();
        let handle = tokio::spawn(async move {
            let result = tokio::spawn(fut).await;
            let why = match result {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) if e.is_panic() => "panicked".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::error!(task = %task_name, error = %why, "task failed; shutting down");
            failures.lock().expect("supervisor lock poisoned").push(format!("{task_name}: {why}"));
            failed.cancel();
        });
        self.steps.last_mut().expect("a step exists").push(Task { name, stop, handle });
    }

    /// Cancelled when a task fails.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Waits for `signal` (or a task failure), then stops the tasks step by step.
    ///
    /// # Errors
    /// [`PipelineError::TaskFailed`] when a task failed at any point.
    pub async fn run_until(self, signal: impl Future<Output = ()>, per_step: Duration) -> Result<(), PipelineError> {
        let failed = self.failed();
        tokio::select! {
            () = signal => {
                self.readiness.drain();
                if !self.drain_delay.is_zero() {
                    tracing::info!(drain_delay = ?self.drain_delay, "shutting down: /readyz answers 503 now; still serving until the drain delay ends");
                    tokio::select! {
                        () = tokio::time::sleep(self.drain_delay) => {}
                        () = failed.cancelled() => {}
                    }
                }
                tracing::info!("shutting down: publishing what is held, then closing client streams");
            }
            () = failed.cancelled() => {}
        }
        self.shutdown(per_step).await
    }

    /// Stops the tasks step by step, each step waiting up to `per_step` for its tasks to finish.
    ///
    /// # Errors
    /// [`PipelineError::TaskFailed`] when a task failed at any point.
    pub async fn shutdown(self, per_step: Duration) -> Result<(), PipelineError> {
        for step in self.steps {
            for s in &step {
                s.stop.cancel();
            }
            for s in step {
                let abort = s.handle.abort_handle();
                if tokio::time::timeout(per_step, s.handle).await.is_err() {
                    tracing::warn!(task = %s.name, waited = ?per_step, "task did not stop in time; aborting it");
                    abort.abort();
                }
            }
        }
        let failures = self.failures.lock().expect("supervisor lock poisoned");
        match failures.first() {
            Some(f) => Err(PipelineError::TaskFailed(f.clone())),
            None => Ok(()),
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
