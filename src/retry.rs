//! Retrying with backon's exponential backoff (jittered, capped, never giving up), logging
//! once per state change instead of once per attempt.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

/// The delays a daemon waits between attempts: 50 ms doubling to `max`, with jitter, forever.
pub fn backoff(max: Duration) -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Tracks whether a dependency is failing, so that the first failure logs a WARN (or ERROR
/// for errors an operator must fix), later ones DEBUG, and the recovery one INFO.
pub struct Health {
    what: &'static str,
    max_delay: Duration,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    failing_since: Option<Instant>,
    attempts: u64,
    last_error: String,
}

impl Health {
    pub fn new(what: &'static str, max_delay: Duration) -> Self {
        Health {
            what,
            max_delay,
            delays: Box::new(backoff(max_delay)),
            failing_since: None,
            attempts: 0,
            last_error: String::new(),
        }
    }

    /// Records a failed attempt and returns how long to wait before the next one.
    /// `operator_must_act` marks errors that will not go away by themselves.
    pub fn failed(&mut self, error: &str, operator_must_act: bool) -> Duration {
        self.attempts += 1;
        let changed = self.failing_since.is_none() || self.last_error != error;
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
        }
        if changed {
            if operator_must_act {
                tracing::error!(
                    dependency = self.what,
                    error,
                    attempt = self.attempts,
                    "failing, will keep retrying"
                );
            } else {
                tracing::warn!(
                    dependency = self.what,
                    error,
                    attempt = self.attempts,
                    "unavailable, retrying with backoff"
                );
            }
            self.last_error = error.to_string();
        } else {
            tracing::debug!(
                dependency = self.what,
                error,
                attempt = self.attempts,
                "still failing"
            );
        }
        self.delays.next().unwrap_or(self.max_delay)
    }

    /// Records a success; logs the recovery if there had been failures.
    pub fn ok(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                dependency = self.what,
                attempts = self.attempts,
                down_ms = since.elapsed().as_millis() as u64,
                "recovered"
            );
            self.attempts = 0;
            self.last_error.clear();
            self.delays = Box::new(backoff(self.max_delay));
        }
    }

    pub fn is_failing(&self) -> bool {
        self.failing_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// The delays grow, stay under the cap, and never run out.
    fn delays_are_capped_and_endless() {
        let cap = Duration::from_secs(2);
        let delays: Vec<Duration> = backoff(cap).take(200).collect();
        assert_eq!(delays.len(), 200, "never gives up");
        // Jitter adds at most the delay itself on top.
        assert!(delays.iter().all(|d| *d <= cap * 2), "{delays:?}");
        assert!(delays[10] > delays[0], "grows: {delays:?}");
    }

    #[test]
    /// A recovery resets the backoff to its minimum.
    fn recovery_resets() {
        let mut h = Health::new("test", Duration::from_secs(5));
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            last = h.failed("down", false);
        }
        assert!(h.is_failing());
        h.ok();
        assert!(!h.is_failing());
        let first = h.failed("down", false);
        assert!(first < last, "first {first:?} after reset vs {last:?}");
    }
}
