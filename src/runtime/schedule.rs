//! Reject pulses waiting to fire, in a fixed-capacity queue ordered by start time.

use std::time::{Duration, Instant};

use heapless::Deque;

/// Pulses that may wait at once: a conveyor holds a handful of parts between camera and gate.
pub const QUEUE_CAPACITY: usize = 64;

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

#[derive(Default)]
pub struct PulseQueue {
    pulses: Deque<Pulse, QUEUE_CAPACITY>,
}

impl PulseQueue {
    pub fn new() -> PulseQueue {
        PulseQueue { pulses: Deque::new() }
    }

    /// Adds a pulse, merging it with the last one when they overlap or touch (a pulse that
    /// starts earlier than the last one merges too: the line stays active longer, never
    /// shorter). `false` when the queue is full.
    pub fn push(&mut self, pulse: Pulse) -> bool {
        if let Some(last) = self.pulses.back_mut() {
            if pulse.start <= last.end {
                last.start = last.start.min(pulse.start);
                last.end = last.end.max(pulse.end);
                return true;
            }
        }
        self.pulses.push_back(pulse).is_ok()
    }

    pub fn front(&self) -> Option<&Pulse> {
        self.pulses.front()
    }

    pub fn pop_front(&mut self) -> Option<Pulse> {
        self.pulses.pop_front()
    }

    pub fn len(&self) -> usize {
        self.pulses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pulses.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_pulses_merge_and_separate_ones_queue() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = PulseQueue::new();
        assert!(q.push(Pulse::at(t0, ms(10))));
        assert!(q.push(Pulse::at(t0 + ms(5), ms(10))));
        assert_eq!(q.len(), 1);
        assert_eq!(q.front().unwrap().end, t0 + ms(15));
        assert!(q.push(Pulse::at(t0 + ms(30), ms(10))));
        assert_eq!(q.len(), 2);
        assert_eq!(
            q.pop_front().unwrap(),
            Pulse {
                start: t0,
                end: t0 + ms(15)
            }
        );
    }

    #[test]
    fn a_full_queue_refuses_instead_of_growing() {
        let t0 = Instant::now();
        let mut q = PulseQueue::new();
        for i in 0..QUEUE_CAPACITY {
            assert!(q.push(Pulse::at(
                t0 + Duration::from_millis(10 * i as u64),
                Duration::from_millis(1)
            )));
        }
        assert!(!q.push(Pulse::at(t0 + Duration::from_secs(10), Duration::from_millis(1))));
        // A pulse overlapping the last still merges.
        let last = t0 + Duration::from_millis(10 * (QUEUE_CAPACITY as u64 - 1));
        assert!(q.push(Pulse::at(last, Duration::from_millis(2))));
    }
}
