//! The reject actuator: a line behind one trait (simulated, rppal, GPIO character device) and a
//! real-time thread that drives it from a fixed-capacity queue of per-part pulses: the line is
//! active while any committed pulse covers the present.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use log::{error, warn};

use super::schedule::{Late, Pulse, PulseQueue, Ticket};

/// An output that rejects a part while active.
pub trait RejectLine: Send {
    /// Drives the output; `intended` is when the edge was scheduled for.
    fn set(&mut self, active: bool, intended: Instant) -> Result<()>;
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    pub active: bool,
    pub intended: Instant,
    pub actual: Instant,
}

/// What a simulated line saw; `edges` has a fixed capacity, later edges are only counted.
#[derive(Debug)]
pub struct SimRecord {
    pub edges: Vec<Edge>,
    pub overflow: u64,
    pub active: bool,
}

/// Records timestamped edges instead of driving a pin.
pub(crate) struct SimulatedLine {
    record: Arc<Mutex<SimRecord>>,
}

impl SimulatedLine {
    /// A line and a handle to what it records (room for `capacity` edges, reserved now).
    pub fn new(capacity: usize) -> (SimulatedLine, Arc<Mutex<SimRecord>>) {
        let record = Arc::new(Mutex::new(SimRecord {
            edges: Vec::with_capacity(capacity),
            overflow: 0,
            active: false,
        }));
        (SimulatedLine { record: record.clone() }, record)
    }
}

impl RejectLine for SimulatedLine {
    fn set(&mut self, active: bool, intended: Instant) -> Result<()> {
        let actual = Instant::now();
        let mut record = self.record.lock().expect("record lock");
        record.active = active;
        if record.edges.len() < record.edges.capacity() {
            record.edges.push(Edge {
                active,
                intended,
                actual,
            });
        } else {
            record.overflow += 1;
        }
        Ok(())
    }
}

/// The last stretch before an edge is spun rather than slept: a sleeping thread can wake
/// milliseconds late on a busy (or virtualised) machine; a spinning one hits the edge within
/// microseconds. Costs at most this much CPU per edge. It is also how long before its start a
/// pulse is committed (no longer cancellable).
const SPIN: Duration = Duration::from_millis(10);

/// A pulse whose line rose later than this after its start was late (an escape).
pub const TOLERANCE: Duration = Duration::from_millis(1);

struct Shared {
    queue: PulseQueue,
    shutdown: AtomicBool,
}

/// Owns the line on its own thread; scheduling and cancelling never wait on that thread.
pub struct Actuator {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Actuator {
    pub fn start(line: Box<dyn RejectLine>) -> Actuator {
        let shared = Arc::new(Shared {
            queue: PulseQueue::new(),
            shutdown: AtomicBool::new(false),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("reject-line".into())
            .spawn(move || {
                raise_priority("reject line", EDGE_PRIORITY);
                drive(line, &worker)
            })
            .expect("spawn the reject-line thread");
        Actuator {
            shared,
            thread: Some(thread),
        }
    }

    /// Queues a provisional pulse (`part`: for one part, not a stretch of unseen ones); `None`
    /// when the queue is full (the caller applies the fail-safe).
    pub fn schedule(&self, pulse: Pulse, part: bool) -> Option<Ticket> {
        let ticket = self.shared.queue.push(pulse, part);
        self.wake();
        ticket
    }

    /// Withdraws a provisional pulse (the part passes); `false` when the line is already
    /// committed to it: it fires.
    pub(crate) fn cancel(&self, ticket: Ticket) -> bool {
        self.shared.queue.cancel(ticket)
    }

    fn wake(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }

    /// Fires what is queued, returns the line to idle, stops the thread and says which pulses
    /// were late.
    pub fn shutdown(mut self) -> Late {
        self.stop();
        self.shared.queue.late()
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.wake();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("the reject-line thread panicked");
            }
        }
    }
}

impl Drop for Actuator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Real-time priority of the edge thread (the capture thread's is below it).
const EDGE_PRIORITY: i32 = 50;

/// Real-time scheduling (SCHED_FIFO at `priority`) for the calling thread, so that busy
/// inference cores cannot delay it (needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO grant, as the
/// systemd unit gives).
pub(super) fn raise_priority(thread: &str, priority: i32) {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param {
            sched_priority: priority,
        };
        // SAFETY: plain syscall on the calling thread with a valid parameter struct.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        if rc != 0 {
            warn!(
                "{thread}: no real-time priority ({}); it may be late under load",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn drive(mut line: Box<dyn RejectLine>, shared: &Shared) {
    let queue = &shared.queue;
    // When the line rose, while it is active.
    let mut rose: Option<Instant> = None;
    loop {
        queue.commit_due(Instant::now() + SPIN);
        match rose {
            Some(since) => {
                let end = covered(queue, since);
                if end > Instant::now() + SPIN {
                    park_until(Some(end));
                    continue;
                }
                spin_until(end);
                // A pulse queued during the spin may still extend the active stretch.
                if covered(queue, since) > end {
                    continue;
                }
                set(line.as_mut(), false, end);
                queue.finish(since, end, TOLERANCE);
                rose = None;
            }
            None => match queue.next_rise() {
                Some(start) => {
                    spin_until(start);
                    set(line.as_mut(), true, start);
                    rose = Some(Instant::now());
                }
                None if shared.shutdown.load(Ordering::Acquire) && queue.is_empty() => break,
                None => park_until(queue.next_live()),
            },
        }
    }
}

/// Until when the line stays active: every provisional pulse that starts while it is active is
/// committed too (its part is rejected whatever its decision).
fn covered(queue: &PulseQueue, since: Instant) -> Instant {
    loop {
        let end = queue.covered_until(since);
        queue.commit_due(end.max(Instant::now() + SPIN));
        if queue.covered_until(since) == end {
            return end;
        }
    }
}

fn set(line: &mut dyn RejectLine, active: bool, intended: Instant) {
    if let Err(e) = line.set(active, intended) {
        error!("reject line: {e:#}");
    }
}

fn spin_until(at: Instant) {
    while Instant::now() < at {
        std::hint::spin_loop();
    }
}

/// Sleeps until the spin before `at` (until woken, without one).
fn park_until(at: Option<Instant>) {
    match at {
        Some(at) => {
            let wake = at.checked_sub(SPIN).unwrap_or(at);
            if let Some(left) = wake.checked_duration_since(Instant::now()) {
                std::thread::park_timeout(left);
            }
        }
        None => std::thread::park(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rises(record: &Mutex<SimRecord>) -> Vec<(bool, Instant)> {
        record
            .lock()
            .unwrap()
            .edges
            .iter()
            .map(|e| (e.active, e.intended))
            .collect()
    }

    #[test]
    fn the_line_follows_the_pulses_left_after_cancels_on_time() {
        let (line, record) = SimulatedLine::new(64);
        let actuator = Actuator::start(Box::new(line));
        let ms = Duration::from_millis;
        let t0 = Instant::now() + ms(100);
        let a = actuator.schedule(Pulse::at(t0, ms(20)), true).unwrap();
        let b = actuator.schedule(Pulse::at(t0 + ms(15), ms(20)), true).unwrap();
        let c = actuator.schedule(Pulse::at(t0 + ms(100), ms(20)), true).unwrap();
        assert!(actuator.cancel(b), "the middle part passes");
        assert!(actuator.cancel(c));
        std::thread::sleep(ms(150));
        assert!(!actuator.cancel(a), "a pulse that fired cannot be withdrawn");
        let late = actuator.shutdown();
        assert_eq!(rises(&record), [(true, t0), (false, t0 + ms(20))]);
        for edge in &record.lock().unwrap().edges {
            assert!(
                edge.actual >= edge.intended && edge.actual - edge.intended < TOLERANCE,
                "{edge:?}"
            );
        }
        assert_eq!(late, Late::default());
    }

    #[test]
    fn a_pulse_scheduled_after_its_start_is_late_and_still_fires() {
        let (line, record) = SimulatedLine::new(64);
        let actuator = Actuator::start(Box::new(line));
        let start = Instant::now() - Duration::from_millis(5);
        actuator
            .schedule(Pulse::at(start, Duration::from_millis(30)), true)
            .unwrap();
        assert_eq!(actuator.shutdown(), Late { pulses: 1, parts: 1 });
        assert_eq!(record.lock().unwrap().edges.len(), 2);
        assert!(!record.lock().unwrap().active);
    }
}
