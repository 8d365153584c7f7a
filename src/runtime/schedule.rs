//! Reject pulses waiting to fire: one entry per part (or per stretch of parts the camera did
//! not see), each cancellable on its own until the edge thread commits to it.
//!
//! The entries live in a fixed set of slots shared without a lock: the threads that schedule and
//! cancel pulses run at normal priority, and one of them preempted while holding a lock would
//! delay the real-time edge thread (Linux mutexes do not lend priority). Each slot's state is one
//! atomic word — state in the low bits, a generation above them, so that a ticket of a freed and
//! reused slot cancels nothing — and its times are only written while the scheduling thread
//! owns the slot.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Entries that may wait at once: parts between camera and gate (checked against the config's
/// frame rate and travel) and the pulses held over unseen parts.
pub(crate) const QUEUE_CAPACITY: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pulse {
    pub start: Instant,
    pub end: Instant,
}

impl Pulse {
    pub fn at(start: Instant, width: Duration) -> Pulse {
        Pulse {
            start,
            end: start + width,
        }
    }
}

/// A queued pulse, to cancel it while it is provisional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    slot: usize,
    /// The slot's word while the pulse is live.
    live: u64,
}

const STATE_BITS: u32 = 2;
const STATE: u64 = (1 << STATE_BITS) - 1;
const FREE: u64 = 0;
/// Claimed by a scheduling thread, which writes the times.
const WRITING: u64 = 1;
/// Provisional: may still be cancelled.
const LIVE: u64 = 2;
/// The edge thread will drive the line for it: no longer cancellable.
const COMMITTED: u64 = 3;

fn word(generation: u64, state: u64) -> u64 {
    generation << STATE_BITS | state
}

#[derive(Default)]
struct Slot {
    word: AtomicU64,
    /// Nanoseconds from the queue's epoch (before it: negative).
    start: AtomicI64,
    end: AtomicI64,
    /// The pulse rejects one part (not a stretch of unseen ones).
    part: AtomicBool,
}

/// Pulses that could not be on time: the line rose later than the tolerance after their start
/// (or they were scheduled after it). Their parts passed the gate: escapes, not rejects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Late {
    pub pulses: u64,
    /// Of those, pulses of one part each.
    pub parts: u64,
}

pub(crate) struct PulseQueue {
    epoch: Instant,
    slots: [Slot; QUEUE_CAPACITY],
    late_pulses: AtomicU64,
    late_parts: AtomicU64,
}

impl Default for PulseQueue {
    fn default() -> PulseQueue {
        PulseQueue::new()
    }
}

impl PulseQueue {
    pub fn new() -> PulseQueue {
        PulseQueue {
            epoch: Instant::now(),
            slots: std::array::from_fn(|_| Slot::default()),
            late_pulses: AtomicU64::new(0),
            late_parts: AtomicU64::new(0),
        }
    }

    fn nanos(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.epoch) {
            Some(after) => after.as_nanos() as i64,
            None => -((self.epoch - at).as_nanos() as i64),
        }
    }

    fn instant(&self, nanos: i64) -> Instant {
        let offset = Duration::from_nanos(nanos.unsigned_abs());
        if nanos >= 0 {
            self.epoch + offset
        } else {
            self.epoch - offset
        }
    }

    /// Queues a provisional pulse; `None` when every slot is taken.
    pub fn push(&self, pulse: Pulse, part: bool) -> Option<Ticket> {
        for (index, slot) in self.slots.iter().enumerate() {
            let current = slot.word.load(Ordering::Relaxed);
            if current & STATE != FREE {
                continue;
            }
            let generation = current >> STATE_BITS;
            let claimed =
                slot.word
                    .compare_exchange(current, word(generation, WRITING), Ordering::Acquire, Ordering::Relaxed);
            if claimed.is_err() {
                continue;
            }
            slot.start.store(self.nanos(pulse.start), Ordering::Relaxed);
            slot.end.store(self.nanos(pulse.end), Ordering::Relaxed);
            slot.part.store(part, Ordering::Relaxed);
            let live = word(generation, LIVE);
            slot.word.store(live, Ordering::Release);
            return Some(Ticket { slot: index, live });
        }
        None
    }

    /// Withdraws a provisional pulse; `false` when the edge thread has committed to it (or it
    /// has fired).
    pub(crate) fn cancel(&self, ticket: Ticket) -> bool {
        let generation = ticket.live >> STATE_BITS;
        self.slots[ticket.slot]
            .word
            .compare_exchange(
                ticket.live,
                word(generation + 1, FREE),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Pulses that could not be on time so far.
    pub fn late(&self) -> Late {
        Late {
            pulses: self.late_pulses.load(Ordering::Relaxed),
            parts: self.late_parts.load(Ordering::Relaxed),
        }
    }

    /// Entries in `state` with their word, start and end (ns from the epoch).
    fn entries(&self, state: u64) -> impl Iterator<Item = (&Slot, u64, i64, i64)> {
        self.slots.iter().filter_map(move |slot| {
            let current = slot.word.load(Ordering::Acquire);
            (current & STATE == state).then(|| {
                let start = slot.start.load(Ordering::Relaxed);
                (slot, current, start, slot.end.load(Ordering::Relaxed))
            })
        })
    }

    // The rest is the edge thread's (one thread drives one queue).

    /// Commits every provisional pulse that starts by `until`.
    pub(super) fn commit_due(&self, until: Instant) {
        let until = self.nanos(until);
        for (slot, live, start, _) in self.entries(LIVE) {
            if start <= until {
                // Lost only to a cancel, which removed the pulse.
                let _ = slot.word.compare_exchange(
                    live,
                    word(live >> STATE_BITS, COMMITTED),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// The earliest start of a committed pulse: when the idle line must rise.
    pub(super) fn next_rise(&self) -> Option<Instant> {
        let first = self.entries(COMMITTED).map(|(_, _, start, _)| start).min()?;
        Some(self.instant(first))
    }

    /// The earliest start of a provisional pulse: when the edge thread must look again.
    pub(super) fn next_live(&self) -> Option<Instant> {
        let first = self.entries(LIVE).map(|(_, _, start, _)| start).min()?;
        Some(self.instant(first))
    }

    /// Until when committed pulses keep the line active without a gap, from `rose` on.
    pub(super) fn covered_until(&self, rose: Instant) -> Instant {
        let mut end = self.nanos(rose);
        loop {
            let reach = self
                .entries(COMMITTED)
                .filter(|(_, _, start, _)| *start <= end)
                .map(|(_, _, _, stop)| stop)
                .fold(end, i64::max);
            if reach == end {
                return self.instant(end);
            }
            end = reach;
        }
    }

    /// The line was active from `rose` to `fell`: the pulses it covered are done. One that
    /// started more than `tolerance` before the line rose was late.
    pub(super) fn finish(&self, rose: Instant, fell: Instant, tolerance: Duration) {
        let late_before = self.nanos(rose) - tolerance.as_nanos() as i64;
        let fell = self.nanos(fell);
        for (slot, committed, start, _) in self.entries(COMMITTED) {
            if start > fell {
                continue;
            }
            if start < late_before {
                self.late_pulses.fetch_add(1, Ordering::Relaxed);
                if slot.part.load(Ordering::Relaxed) {
                    self.late_parts.fetch_add(1, Ordering::Relaxed);
                }
            }
            slot.word
                .store(word((committed >> STATE_BITS) + 1, FREE), Ordering::Release);
        }
    }

    /// Nothing queued, provisional or committed.
    pub(super) fn is_empty(&self) -> bool {
        self.slots
            .iter()
            .all(|slot| slot.word.load(Ordering::Acquire) & STATE == FREE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const TOLERANCE: Duration = Duration::from_millis(1);

    #[test]
    fn each_pulse_is_cancelled_on_its_own_until_it_is_committed() {
        let q = PulseQueue::new();
        let t0 = Instant::now() + MS(100);
        let a = q.push(Pulse::at(t0, MS(10)), true).unwrap();
        let b = q.push(Pulse::at(t0 + MS(5), MS(10)), true).unwrap();
        let c = q.push(Pulse::at(t0 + MS(50), MS(10)), true).unwrap();
        assert!(q.cancel(b), "a provisional pulse is withdrawn alone");
        assert!(!q.cancel(b), "a ticket cancels once");
        q.commit_due(t0 + MS(20));
        assert!(!q.cancel(a), "a committed pulse fires");
        assert_eq!(q.next_rise(), Some(t0));
        assert_eq!(q.covered_until(t0), t0 + MS(10), "b's time is no longer covered");
        assert_eq!(q.next_live(), Some(t0 + MS(50)));
        q.finish(t0, t0 + MS(10), TOLERANCE);
        assert_eq!(q.next_rise(), None);
        assert!(q.cancel(c));
        assert!(q.is_empty());
        assert_eq!(q.late(), Late::default());
    }

    #[test]
    fn overlapping_and_touching_pulses_keep_the_line_active() {
        let q = PulseQueue::new();
        let t0 = Instant::now();
        for offset in [0, 5, 15, 40] {
            q.push(Pulse::at(t0 + MS(offset), MS(10)), true).unwrap();
        }
        q.commit_due(t0 + MS(100));
        assert_eq!(q.covered_until(t0), t0 + MS(25));
        q.finish(t0, t0 + MS(25), TOLERANCE);
        assert_eq!(q.next_rise(), Some(t0 + MS(40)));
    }

    #[test]
    fn a_pulse_the_line_could_not_cover_in_time_is_late() {
        let q = PulseQueue::new();
        let t0 = Instant::now();
        q.push(Pulse::at(t0, MS(10)), true).unwrap();
        q.push(Pulse::at(t0, MS(30)), false).unwrap();
        q.commit_due(t0);
        let rose = t0 + MS(2);
        q.finish(rose, q.covered_until(rose), TOLERANCE);
        assert_eq!(q.late(), Late { pulses: 2, parts: 1 });
        q.push(Pulse::at(t0 + MS(50), MS(10)), true).unwrap();
        q.commit_due(t0 + MS(50));
        q.finish(t0 + MS(50), t0 + MS(60), TOLERANCE);
        assert_eq!(q.late().pulses, 2, "an edge on time is not late");
    }

    #[test]
    fn a_full_queue_refuses_instead_of_growing_and_slots_are_reused() {
        let q = PulseQueue::new();
        let t0 = Instant::now() + Duration::from_secs(10);
        let tickets: Vec<Ticket> = (0..QUEUE_CAPACITY)
            .map(|i| q.push(Pulse::at(t0 + MS(i as u64), MS(1)), true).unwrap())
            .collect();
        assert!(q.push(Pulse::at(t0, MS(1)), true).is_none());
        assert!(q.cancel(tickets[7]));
        let reused = q.push(Pulse::at(t0, MS(1)), true).unwrap();
        assert!(
            !q.cancel(tickets[7]),
            "an old ticket does not cancel the slot's new pulse"
        );
        assert!(q.cancel(reused));
    }
}
