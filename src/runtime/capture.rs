//! Taking frames on a thread of their own: each part gets its provisional reject at its gate time
//! the moment the camera sees it, however long judging takes, so that a part whose decision
//! comes late (or never) is rejected on time by the edge thread. Judging gets the frame through a
//! bounded channel; when it is behind, parts are still counted, never lost.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use log::{error, warn};

use super::config::{FailsafeAction, RunConfig};
use super::reject::{raise_priority, Actuator};
use super::schedule::{Pulse, Ticket};
use super::source::{Frame, FrameSource, Truth};
use super::stop_line::assert_stop_line;

/// Real-time priority of the capture thread (below the edge thread's 50).
const CAPTURE_PRIORITY: i32 = 40;

/// Most frame buffers: more could only hold frames past their deadline.
const MAX_FRAME_BUFFERS: usize = 64;

/// A part as the camera saw it.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    pub sequence: u64,
    pub captured: Instant,
    pub truth: Option<Truth>,
    /// Its provisional reject; `None` when the reject queue was full (the stop line is asserted).
    pub ticket: Option<Ticket>,
}

pub enum Event {
    /// A part and its frame; no frame when every buffer was waiting to be judged.
    Part(Part, Option<Frame>),
    /// The source ended, failed for good, or parts passed unseen with the `stop_line` action.
    End(Result<()>),
}

/// What the capture thread counts for the loop's counters.
#[derive(Default)]
pub struct CaptureCounts {
    /// Stretches without frames (stalls, camera errors, dropped frames).
    pub stalls: AtomicU64,
    pub dropped_frames: AtomicU64,
    /// Parts that found the channel to judging full: rejected by default, counted by the loop.
    pub unreported: AtomicU64,
}

/// Frame buffers shared by the capture thread and judging, reused last-in first-out so that a
/// loop that keeps up touches one or two of them.
pub struct FramePool(Mutex<Vec<Frame>>);

impl FramePool {
    /// Enough buffers for the frames of one deadline.
    pub(crate) fn for_config(config: &RunConfig) -> FramePool {
        let frames = (config.source.fps() * config.failsafe.deadline.as_secs_f64()).ceil() as usize + 2;
        let count = frames.min(MAX_FRAME_BUFFERS);
        let mut buffers = Vec::with_capacity(count);
        buffers.extend((0..count).map(|_| Frame::new()));
        FramePool(Mutex::new(buffers))
    }

    /// Sizes the buffers like the first frame's (a later first use would allocate mid-run).
    fn size_like(&self, first: &Frame) {
        for buffer in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
            buffer.size_like(first);
        }
    }

    fn take(&self) -> Option<Frame> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    pub fn give(&self, frame: Frame) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(frame);
    }
}

/// What a panic says, when it says it as text.
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The capture thread's side of the loop.
pub struct Capture<'a> {
    pub config: &'a RunConfig,
    pub actuator: &'a Actuator,
    pub events: SyncSender<Event>,
    pub pool: &'a FramePool,
    pub counts: &'a CaptureCounts,
    /// Set by the loop to end capturing (a signal, the end of the loop).
    pub stop: &'a AtomicBool,
    pub max_frames: Option<u64>,
}

impl Capture<'_> {
    /// Takes frames until the source ends, fails for good, `max_frames` or a stop. Runs at
    /// real-time priority (below the edge thread's): a part's provisional reject must be queued
    /// well before its gate time however busy judging keeps the cores.
    pub fn run(self, source: &mut dyn FrameSource) {
        raise_priority("capture", CAPTURE_PRIORITY);
        let end = catch_unwind(AssertUnwindSafe(|| self.take_frames(source)))
            .unwrap_or_else(|panic| Err(anyhow!("the frame source panicked: {}", panic_message(panic.as_ref()))));
        // The loop reads until this last event.
        let _ = self.events.send(Event::End(end));
    }

    fn take_frames(&self, source: &mut dyn FrameSource) -> Result<()> {
        let mut spare = Frame::new();
        let mut failures = 0;
        let mut last_capture = None;
        let mut taken = 0;
        while !self.stop.load(Ordering::Acquire) && self.max_frames.is_none_or(|m| taken < m) {
            let mut buffer = self.pool.take();
            let frame = buffer.as_mut().unwrap_or(&mut spare);
            let dropped_before = source.dropped();
            let waited = Instant::now();
            let next = source.next(frame);
            let now = Instant::now();
            match next {
                Ok(true) => failures = 0,
                Ok(false) => break,
                Err(e) => {
                    error!("{e:#}");
                    failures += 1;
                    if let Some(buffer) = buffer {
                        self.pool.give(buffer);
                    }
                    self.blind(waited, now)?;
                    if failures > self.config.failsafe.source_retries {
                        return Err(e.context(format!("the frame source failed {failures} times in a row")));
                    }
                    continue;
                }
            }
            if now - waited > self.config.failsafe.stall {
                warn!("source stalled for {:.0} ms", (now - waited).as_secs_f64() * 1e3);
                self.blind(waited, now)?;
            }
            let dropped = source.dropped().saturating_sub(dropped_before);
            if let Some(last) = last_capture.filter(|_| dropped > 0) {
                warn!("the source dropped {dropped} frames before frame {}", frame.sequence);
                self.counts.dropped_frames.fetch_add(dropped, Ordering::Relaxed);
                self.blind(last, frame.captured)?;
            }
            if last_capture.is_none() {
                self.pool.size_like(frame);
            }
            last_capture = Some(frame.captured);
            taken += 1;
            let part = self.provisional_reject(frame);
            if let Err(TrySendError::Full(event) | TrySendError::Disconnected(event)) =
                self.events.try_send(Event::Part(part, buffer))
            {
                self.counts.unreported.fetch_add(1, Ordering::Relaxed);
                if let Event::Part(_, Some(buffer)) = event {
                    self.pool.give(buffer);
                }
            }
        }
        Ok(())
    }

    /// Queues the part's reject at its gate time; judging withdraws it for a pass in time.
    fn provisional_reject(&self, frame: &Frame) -> Part {
        let reject = &self.config.reject;
        let ticket = self.actuator.schedule(
            Pulse::at(frame.captured + reject.travel_delay, reject.pulse_width),
            true,
        );
        if ticket.is_none() {
            error!("frame {}: reject queue full; asserting the stop line", frame.sequence);
            assert_stop_line(self.config.failsafe.stop_line.as_ref());
        }
        Part {
            sequence: frame.sequence,
            captured: frame.captured,
            truth: frame.truth,
            ticket,
        }
    }

    /// The fail-safe for parts that passed the camera unseen between `from` and `to` (a stall,
    /// a camera error, dropped frames): the reject gate stays active while they pass it, or the
    /// line is stopped (an error ends the loop).
    fn blind(&self, from: Instant, to: Instant) -> Result<()> {
        self.counts.stalls.fetch_add(1, Ordering::Relaxed);
        let unseen_ms = (to - from).as_secs_f64() * 1e3;
        match self.config.failsafe.action {
            FailsafeAction::Reject => {
                let reject = &self.config.reject;
                let width: Duration = reject.pulse_width.max(to - from);
                error!("no frames for {unseen_ms:.0} ms: the reject gate stays active while those parts pass it");
                if self
                    .actuator
                    .schedule(Pulse::at(from + reject.travel_delay, width), false)
                    .is_none()
                {
                    error!("reject queue full; asserting the stop line");
                    assert_stop_line(self.config.failsafe.stop_line.as_ref());
                }
                Ok(())
            }
            FailsafeAction::StopLine => Err(anyhow::anyhow!("no frames for {unseen_ms:.0} ms: parts passed unseen")),
        }
    }
}
