//! Logging set-up: `tracing` to stderr, as text for people or JSON lines for collectors.
//! The level comes from `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

/// Monotonic instants as wall-clock microseconds since the Unix epoch, through one pair of
/// clock readings: how the per-batch traces (`invalidator::relay::trace`,
/// `invalidator::consumer::trace`) give times another process can line up with its own.
pub struct WallClock {
    now: std::time::Instant,
    unix_us: i64,
}

impl WallClock {
    pub fn now() -> WallClock {
        let (now, wall) = (std::time::Instant::now(), std::time::SystemTime::now());
        WallClock {
            now,
            unix_us: wall
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64),
        }
    }

    /// `at` in µs since the Unix epoch (instants after the reading count as the reading).
    pub fn unix_us(&self, at: std::time::Instant) -> i64 {
        self.unix_us - self.now.saturating_duration_since(at).as_micros() as i64
    }
}

/// The event ids as the traces log them: hyphenated, lower case, space-separated.
pub fn trace_ids(ids: impl Iterator<Item = uuid::Uuid>) -> String {
    let mut out = String::new();
    for id in ids {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(
            id.hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{trace_ids, WallClock};
    use std::time::{Duration, Instant};

    #[test]
    fn wall_clock_keeps_the_distance_between_instants() {
        let earlier = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        let clock = WallClock::now();
        let (a, b) = (clock.unix_us(earlier), clock.unix_us(clock.now));
        assert!(b - a >= 5_000, "{a} {b}");
        assert!(b - a < 5_000_000, "{a} {b}");
        // Later than the reading: the reading.
        assert_eq!(clock.unix_us(clock.now + Duration::from_secs(1)), b);
        let id = uuid::Uuid::from_u128(1);
        assert_eq!(trace_ids([].into_iter()), "");
        assert_eq!(
            trace_ids([id, id].into_iter()),
            "00000000-0000-0000-0000-000000000001 00000000-0000-0000-0000-000000000001"
        );
    }
}
