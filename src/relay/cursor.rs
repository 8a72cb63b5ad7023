//! Where the next claim starts scanning the outbox's primary key.
//!
//! Deleted rows stay behind as dead tuples while any snapshot still needs them (a long
//! transaction anywhere in the database holds them all), and a claim that scans from the
//! smallest id walks over every one of them. So claims start from a remembered id: the
//! highest id claimed at least [`HINT_LAG`] ago. Rows that commit out of id order within that
//! window are still in front of the hint; rows whose transaction stayed open longer are
//! picked up by a full sweep from the start every `sweep_interval`. Correctness never
//! depends on the hint: the sweep sees everything.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far the hint trails the claims: a row whose transaction commits within this long
/// after a higher id was claimed is still picked up by the next ordinary claim.
pub const HINT_LAG: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Cursor {
    sweep_interval: Duration,
    last_sweep: Option<Instant>,
    /// (when, highest id claimed then), oldest first.
    recent: VecDeque<(Instant, i64)>,
    /// Highest id claimed at least HINT_LAG ago.
    floor: i64,
}

impl Cursor {
    pub fn new(sweep_interval: Duration) -> Self {
        Cursor {
            sweep_interval,
            last_sweep: None,
            recent: VecDeque::new(),
            floor: 0,
        }
    }

    /// The smallest id the next claim should consider; 0 means a full sweep.
    pub fn next_from(&mut self, now: Instant) -> i64 {
        if self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= self.sweep_interval)
        {
            self.last_sweep = Some(now);
            return 0;
        }
        while let Some(&(at, id)) = self.recent.front() {
            if now.duration_since(at) < HINT_LAG {
                break;
            }
            self.floor = self.floor.max(id);
            self.recent.pop_front();
        }
        if self.floor == 0 {
            0
        } else {
            self.floor + 1
        }
    }

    /// Records the highest id a committed batch claimed.
    pub fn claimed(&mut self, now: Instant, max_id: i64) {
        self.recent.push_back((now, max_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// The first claim sweeps; claims within the lag start from the old floor; afterwards
    /// they start after the highest id claimed at least HINT_LAG ago; sweeps recur.
    fn hint_trails_claims_and_sweeps_recur() {
        let t0 = Instant::now();
        let mut c = Cursor::new(Duration::from_secs(5));
        assert_eq!(c.next_from(t0), 0, "first claim is a full sweep");
        c.claimed(t0, 100);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(
            c.next_from(t1),
            0,
            "within the lag, rows below 100 may still commit"
        );
        c.claimed(t1, 200);
        let t2 = t0 + Duration::from_millis(1200);
        assert_eq!(c.next_from(t2), 101, "100 was claimed over HINT_LAG ago");
        let t3 = t0 + Duration::from_millis(1600);
        assert_eq!(c.next_from(t3), 201);
        assert_eq!(
            c.next_from(t0 + Duration::from_secs(5)),
            0,
            "periodic sweep"
        );
        assert_eq!(
            c.next_from(t0 + Duration::from_millis(5100)),
            201,
            "after the sweep the hint is back"
        );
    }

    #[test]
    /// A sweep that claims low ids never lowers the hint below what was already passed.
    fn floor_never_decreases() {
        let t0 = Instant::now();
        let mut c = Cursor::new(Duration::from_secs(60));
        c.next_from(t0);
        c.claimed(t0, 500);
        c.claimed(t0 + Duration::from_millis(10), 7);
        assert_eq!(c.next_from(t0 + Duration::from_secs(2)), 501);
    }
}
