//! The reject actuator: a line behind one trait (simulated, rppal, GPIO character device) and a
//! timing thread that fires scheduled pulses from a fixed-capacity queue.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use log::error;

use super::schedule::{Pulse, PulseQueue};

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
pub struct SimulatedLine {
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
/// microseconds. Costs at most this much CPU per edge.
const SPIN: Duration = Duration::from_millis(10);

struct Shared {
    queue: PulseQueue,
    shutdown: bool,
}

/// Owns the line on its own thread; `schedule` never blocks on the line.
pub struct Actuator {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Actuator {
    pub fn start(line: Box<dyn RejectLine>) -> Actuator {
        let shared = Arc::new((
            Mutex::new(Shared {
                queue: PulseQueue::new(),
                shutdown: false,
            }),
            Condvar::new(),
        ));
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("reject-line".into())
            .spawn(move || {
                raise_priority();
                drive(line, &worker)
            })
            .expect("spawn the reject-line thread");
        Actuator {
            shared,
            thread: Some(thread),
        }
    }

    /// Queues a pulse; overlapping pulses merge. `false` when the queue is full and the pulse
    /// could not be merged (the caller applies the fail-safe).
    pub fn schedule(&self, pulse: Pulse) -> bool {
        let (lock, wake) = &*self.shared;
        let accepted = lock.lock().expect("actuator lock").queue.push(pulse);
        wake.notify_one();
        accepted
    }

    /// Fires what is queued, returns the line to idle and stops the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let (lock, wake) = &*self.shared;
        lock.lock().expect("actuator lock").shutdown = true;
        wake.notify_one();
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

/// Real-time scheduling for the edge thread, so that a busy inference core cannot delay an edge
/// (needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO grant, as the systemd unit gives).
fn raise_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 50 };
        // SAFETY: plain syscall on the calling thread with a valid parameter struct.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        if rc != 0 {
            log::warn!(
                "reject line: no real-time priority ({}); edges may be late under load",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn drive(mut line: Box<dyn RejectLine>, shared: &(Mutex<Shared>, Condvar)) {
    let (lock, wake) = shared;
    let mut active = false;
    loop {
        let mut state = lock.lock().expect("actuator lock");
        let next = state.queue.front().map(|p| if active { p.end } else { p.start });
        let Some(at) = next else {
            if state.shutdown {
                break;
            }
            drop(wake.wait(state).expect("actuator lock"));
            continue;
        };
        let now = Instant::now();
        if at > now + SPIN {
            drop(wake.wait_timeout(state, at - now - SPIN).expect("actuator lock"));
            continue;
        }
        if !active {
            drop(state);
        } else {
            state.queue.pop_front();
            drop(state);
        }
        while Instant::now() < at {
            std::hint::spin_loop();
        }
        active = !active;
        if let Err(e) = line.set(active, at) {
            error!("reject line: {e:#}");
        }
    }
    // Shutdown waits for the queue to drain, and a pulse leaves the queue on its falling edge.
    debug_assert!(!active, "the line is idle when the thread ends");
}
