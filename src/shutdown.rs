//! Graceful shutdown: SIGTERM and SIGINT cancel one `CancellationToken`; the daemons check it
//! at safe points (between batches), so a batch in flight commits or rolls back, never half.
//! [`run_with_grace`] bounds the drain and names the task that did not finish.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A token cancelled by the first SIGTERM or SIGINT. A second signal exits at once (130).
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested, finishing the batch in flight");
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal, exiting without draining");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Why a daemon did not stop cleanly within its grace period.
#[derive(Debug, thiserror::Error)]
#[error("{task} did not finish within the shutdown grace period of {grace:?}")]
pub struct GraceExceeded {
    pub task: &'static str,
    pub grace: Duration,
}

/// Runs `task` until it returns; once `token` is cancelled, waits at most `grace` more.
pub async fn run_with_grace<F, T>(
    task_name: &'static str,
    token: CancellationToken,
    grace: Duration,
    task: F,
) -> Result<T, GraceExceeded>
where
    F: Future<Output = T>,
{
    tokio::pin!(task);
    tokio::select! {
        biased;
        out = &mut task => return Ok(out),
        _ = token.cancelled() => {}
    }
    tokio::time::timeout(grace, task)
        .await
        .map_err(|_| GraceExceeded {
            task: task_name,
            grace,
        })
}
