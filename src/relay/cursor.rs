//! Where the next claim starts scanning the outbox's primary key.
//!
//! Deleted rows stay behind as dead tuples while any snapshot still needs them (a long
//! transaction anywhere in the database holds them all), and a claim that scans from the
//! smallest id walks over every one of them. So claims start from a remembered id: the
//! highest id claimed at least [`HINT_LAG`] ago. Rows that commit out of id order within that
//! window are still in front of the hint; rows whose transaction stayed open longer are
//! picked up by a full sweep from the start every `sweep_interval`. Correctness never
//! depends on the hint: the sweep sees everything.
//!
//! While claims come back full (a backlog is draining), the next claim starts right after
//! the last one's highest id instead of at the trailing floor: otherwise it would step over
//! every row the batches still in flight hold locked (SKIP LOCKED visits each one) and over
//! the second's worth of rows claimed since the floor. A row committed late below that point
//! meanwhile waits for the drain to end or for the next sweep, as it would past the floor.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far the hint trails the claims: a row whose transaction commits within this long
/// after a higher id was claimed is still picked up by the next ordinary claim.
pub const HINT_LAG: Duration = Duration::from_secs(1);

/// Where the next claim starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The periodic full sweep from the smallest id, which passes the turn on before it
    /// claims (under a long-open transaction it walks every dead tuple since).
    Sweep,
    /// An ordinary claim of the rows from this id on: 0 too, until the first claim is
    /// `HINT_LAG` old, and that is not a sweep (an idle relay's polls are all such claims).
    From(i64),
}

impl Scan {
    /// The smallest id the claim considers.
    pub fn from_id(self) -> i64 {
        match self {
            Scan::Sweep => 0,
            Scan::From(id) => id,
        }
    }
}

#[derive(Debug)]
pub struct Cursor {
    sweep_interval: Duration,
    last_sweep: Option<Instant>,
    /// (when, highest id claimed then), oldest first.
    recent: VecDeque<(Instant, i64)>,
    /// Highest id claimed at least HINT_LAG ago.
    floor: i64,
    /// Highest id of the last claim, while claims come back full.
    continuation: Option<i64>,
}

impl Cursor {
    pub fn new(sweep_interval: Duration) -> Self {
        Cursor {
            sweep_interval,
            last_sweep: None,
            recent: VecDeque::new(),
            floor: 0,
            continuation: None,
        }
    }

    /// Where the next claim starts: a sweep every `sweep_interval` (the first claim is one),
    /// else the floor, or past the last full batch.
    pub fn next(&mut self, now: Instant) -> Scan {
        if self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= self.sweep_interval)
        {
            self.last_sweep = Some(now);
            return Scan::Sweep;
        }
        while let Some(&(at, id)) = self.recent.front() {
            if now.duration_since(at) < HINT_LAG {
                break;
            }
            self.floor = self.floor.max(id);
            self.recent.pop_front();
        }
        let from = if self.floor == 0 { 0 } else { self.floor + 1 };
        Scan::From(match self.continuation {
            Some(id) => from.max(id + 1),
            None => from,
        })
    }

    /// What the claim that just took its turn found: a full batch (`Some(its highest id)`)
    /// makes the next claim continue after it; anything else (a partial or empty claim, a
    /// failed batch, whose rows are released below that point) sends it back to the floor.
    pub fn continue_after(&mut self, full_batch_max_id: Option<i64>) {
        self.continuation = full_batch_max_id;
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
        assert_eq!(c.next(t0), Scan::Sweep, "first claim is a full sweep");
        c.claimed(t0, 100);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(
            c.next(t1),
            Scan::From(0),
            "within the lag, rows below 100 may still commit: from 0, and not a sweep"
        );
        c.claimed(t1, 200);
        let t2 = t0 + Duration::from_millis(1200);
        assert_eq!(
            c.next(t2),
            Scan::From(101),
            "100 was claimed over HINT_LAG ago"
        );
        let t3 = t0 + Duration::from_millis(1600);
        assert_eq!(c.next(t3), Scan::From(201));
        assert_eq!(
            c.next(t0 + Duration::from_secs(5)),
            Scan::Sweep,
            "periodic sweep"
        );
        assert_eq!(
            c.next(t0 + Duration::from_millis(5100)),
            Scan::From(201),
            "after the sweep the hint is back"
        );
    }

    #[test]
    /// Full batches chain: each claim starts after the last one's highest id, even within
    /// the lag; a partial batch or a failure goes back to the floor; sweeps still come.
    fn full_batches_continue_after_the_last_claim() {
        let t0 = Instant::now();
        let mut c = Cursor::new(Duration::from_secs(5));
        assert_eq!(c.next(t0), Scan::Sweep, "first claim is a full sweep");
        c.continue_after(Some(1000));
        c.claimed(t0, 1000);
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(
            c.next(t1),
            Scan::From(1001),
            "continues past the full batch"
        );
        c.continue_after(Some(2000));
        assert_eq!(c.next(t1), Scan::From(2001));
        c.continue_after(None);
        assert_eq!(
            c.next(t1),
            Scan::From(0),
            "a partial batch goes back to the floor (none yet within the lag)"
        );
        c.continue_after(Some(3000));
        let t2 = t0 + Duration::from_millis(1100);
        assert_eq!(
            c.next(t2),
            Scan::From(3001),
            "the continuation is past the floor (1001)"
        );
        c.continue_after(None);
        assert_eq!(c.next(t2), Scan::From(1001), "back to the floor");
        c.continue_after(Some(4000));
        assert_eq!(
            c.next(t0 + Duration::from_secs(5)),
            Scan::Sweep,
            "the periodic sweep still comes"
        );
        assert_eq!(c.next(t0 + Duration::from_millis(5010)), Scan::From(4001));
    }

    #[test]
    /// A sweep that claims low ids never lowers the hint below what was already passed.
    fn floor_never_decreases() {
        let t0 = Instant::now();
        let mut c = Cursor::new(Duration::from_secs(60));
        c.next(t0);
        c.claimed(t0, 500);
        c.claimed(t0 + Duration::from_millis(10), 7);
        assert_eq!(c.next(t0 + Duration::from_secs(2)), Scan::From(501));
    }
}
