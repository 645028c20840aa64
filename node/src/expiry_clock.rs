//! The clock a compacting leader decides with: the tombstone cutoff (`delete.retention.ms`)
//! and the compaction lag (`min.compaction.lag.ms`).
//!
//! Decisions merge by the later cutoff (`CompactionDecision::merge`): that is what keeps
//! every replica converging on one log whichever decisions it applied. So a cutoff decided
//! too late can never be taken back, and one decision made while the leader's wall clock ran
//! ahead (a clock stepped forward, a node restarted under a wrong clock) removed every
//! tombstone early until real time caught up with the jump, however soon the clock was fixed.
//!
//! This clock never runs ahead of what the data shows. It is anchored at the newest record
//! timestamp the replica appended (producers' clocks, which do not jump with this node's; a
//! timestamp ahead of this node's wall clock counts as the wall clock) and advances from
//! there with the monotonic clock; it never passes the wall clock. Records that arrive with
//! later timestamps move the anchor forward, so with producers writing it follows their
//! time. On an idle topic it keeps advancing; a leader that starts long after the last record
//! anchors at that record, so its tombstones expire up to that gap late, never early.

use std::time::Instant;

#[derive(Debug, Default, Clone, Copy)]
pub struct ExpiryClock {
    /// (time in ms since the Unix epoch, the monotonic instant it was that time).
    anchor: Option<(i64, Instant)>,
}

impl ExpiryClock {
    /// A batch of records was appended whose newest timestamp is `timestamp_ms`; `wall_ms`
    /// and `now` are this node's wall and monotonic clocks at that moment.
    pub fn observe(&mut self, timestamp_ms: i64, wall_ms: i64, now: Instant) {
        let shown = timestamp_ms.min(wall_ms);
        if self
            .projected(now)
            .is_none_or(|projected| shown > projected)
        {
            self.anchor = Some((shown, now));
        }
    }

    pub fn is_anchored(&self) -> bool {
        self.anchor.is_some()
    }

    /// The time to decide with: the anchor advanced by the monotonic clock, never past the
    /// wall clock; the wall clock itself when nothing anchored the clock yet.
    pub fn now_ms(&self, wall_ms: i64, now: Instant) -> i64 {
        self.projected(now)
            .map_or(wall_ms, |projected| projected.min(wall_ms))
    }

    fn projected(&self, now: Instant) -> Option<i64> {
        self.anchor.map(|(anchor_ms, at)| {
            let elapsed = now.saturating_duration_since(at).as_millis();
            anchor_ms.saturating_add(i64::try_from(elapsed).unwrap_or(i64::MAX))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const HOUR_MS: i64 = 3_600_000;

    /// The issue the clock exists for: the wall clock jumps two hours ahead, the data does
    /// not, and the clock decided with stays with the data.
    #[test]
    fn a_wall_clock_jump_does_not_move_it_past_the_data() {
        let start = Instant::now();
        let mut clock = ExpiryClock::default();
        clock.observe(1_000_000, 1_000_000, start);
        let later = start + Duration::from_secs(10);
        let jumped_wall = 1_010_000 + 2 * HOUR_MS;
        assert_eq!(clock.now_ms(jumped_wall, later), 1_010_000);
        // Records written meanwhile with true timestamps keep it there.
        clock.observe(1_009_000, jumped_wall, later);
        assert_eq!(clock.now_ms(jumped_wall, later), 1_010_000);
    }

    /// Idle, it advances with the monotonic clock; a wall clock behind it caps it.
    #[test]
    fn it_advances_while_idle_and_never_passes_the_wall_clock() {
        let start = Instant::now();
        let mut clock = ExpiryClock::default();
        assert_eq!(clock.now_ms(42, start), 42, "unanchored: the wall clock");
        clock.observe(1_000_000, 1_000_000, start);
        let later = start + Duration::from_secs(60);
        assert_eq!(clock.now_ms(2 * HOUR_MS, later), 1_060_000);
        assert_eq!(clock.now_ms(1_030_000, later), 1_030_000);
    }

    /// A record stamped ahead of this node's wall clock (a producer's wrong clock, or a
    /// hostile one) moves the anchor only as far as the wall clock; later timestamps move it
    /// forward, earlier ones never back.
    #[test]
    fn producer_timestamps_move_it_forward_only_up_to_the_wall_clock() {
        let start = Instant::now();
        let mut clock = ExpiryClock::default();
        clock.observe(i64::MAX, 5_000, start);
        assert_eq!(clock.now_ms(5_000, start), 5_000);
        clock.observe(4_000, 5_000, start);
        assert_eq!(
            clock.now_ms(9_000, start),
            5_000,
            "an older record does not move it back"
        );
        clock.observe(8_000, 9_000, start);
        assert_eq!(clock.now_ms(9_000, start), 8_000);
    }
}
