//! The inspection loop: a capture thread takes each frame and queues its part's provisional
//! reject; this thread judges it — ROI → preprocess → route → score → decide — and withdraws the
//! reject for a pass decided in time. A part that cannot be judged in time (late, a fault, a
//! panic) keeps its reject, or the line is stopped; counters throughout.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use image::RgbImage;
use log::{debug, error, info, warn};
use tract_core::prelude::Tensor;

use super::audit::Auditor;
use super::capture::{panic_message, Capture, CaptureCounts, Event, FramePool, Part};
use super::config::{mib, FailsafeAction, RoutingConfig, RoutingMode, RunConfig};
use super::counters::{Counters, Lap, MemoryReport, PartRecord, Summary};
use super::open_line;
use super::pixels::copy_image;
use super::reject::{Actuator, SimRecord};
use super::schedule::QUEUE_CAPACITY;
use super::source::{Frame, FrameSource};
use super::stop_line::{assert_stop_line, open_stop_line};
use crate::alloc::{
    allocation_counts, frame_pool_bytes, in_frame_pool, peak_rss_bytes, report_panics_from_the_heap,
    reserve_frame_pool, AllocationCounts,
};
use crate::backbone::BackboneSpec;
use crate::backbone::{Backbone, Preprocessor};
use crate::detect::{Detector, Judgement, Stage};
use crate::update::listener::{UpdateListener, UpdatePolicy};
use crate::update::signing::read_public_key;
use crate::update::state::{Demotion, DeviceState, Installed};
use crate::update::store::{BankStore, Origin};

/// Frames before allocation counting starts (buffers and caches fill on the first ones).
const WARM_UP_FRAMES: u64 = 5;

/// Parts whose records an endless run keeps (the first ones; counters cover the rest).
const PART_RECORDS: u64 = 4096;

/// A bank that faults on each of its first this many frames is sent back to the last-known-good
/// one.
pub const DEMOTE_AFTER: u32 = 3;

/// How often the loop looks at the stop flag while it waits for a frame.
const STOP_POLL: Duration = Duration::from_millis(50);

pub struct Outcome {
    pub summary: Summary,
    pub parts: Vec<PartRecord>,
    /// The simulated line's record, when the line is simulated.
    pub sim: Option<Arc<Mutex<SimRecord>>>,
    /// The loop ended on the stop flag (SIGTERM, SIGINT).
    pub stopped: bool,
    /// What ended the loop early, the fail-safe applied: a camera failing for good, or a part
    /// not judged in time with the `stop_line` action.
    pub fault: Option<anyhow::Error>,
}

/// Route state of sticky routing.
#[derive(Default)]
struct Sticky {
    task: Option<usize>,
    since_reroute: u32,
}

impl Sticky {
    /// Per frame: route every time. Sticky: the last task, for up to `reroute_every` frames.
    fn first_guess(&self, config: RoutingConfig) -> Option<usize> {
        let sticky = config.mode == RoutingMode::Sticky && self.since_reroute < config.reroute_every;
        self.task.filter(|_| sticky)
    }

    /// Follows a frame's judgement; returns the task it followed before.
    fn follow(&mut self, judgement: &Judgement) -> Option<usize> {
        self.since_reroute = match judgement.routing {
            Some(_) => 0,
            None => self.since_reroute + 1,
        };
        std::mem::replace(&mut self.task, (!judgement.unknown).then_some(judgement.task))
    }
}

/// How a bank has done since it was adopted.
#[derive(Default)]
struct Probation {
    /// It has judged a frame.
    proven: bool,
    faults: u32,
}

pub struct Inspector {
    backbone: Backbone,
    /// Shared with the update listener: the bank installed now, and the counters.
    state: Arc<DeviceState>,
    /// The bank frames are judged with, taken from `state` between frames; `None` when no bank
    /// could be loaded: every part gets the fail-safe action.
    current: Option<Arc<Installed>>,
    pre: Preprocessor,
    roi_view: RgbImage,
    /// The judged task's patch scores for the last frame.
    patch_scores: Vec<f32>,
    config: RunConfig,
    sticky: Sticky,
    probation: Probation,
    /// How long judging a frame takes lately (a moving average): a frame with less time left
    /// before its deadline is not started, so that an overloaded loop spends its time on frames
    /// it can still decide.
    judging_time: Duration,
    /// Set to end the loop between frames (a signal handler's flag).
    stop: Arc<AtomicBool>,
}

/// What the loop holds while it runs (the actuator beside it, shared with the capture thread).
struct Line {
    auditor: Option<Auditor>,
    counters: Counters,
}

/// The judging side of a run: what it reads and updates.
struct Loop<'a> {
    events: &'a Receiver<Event>,
    actuator: &'a Actuator,
    pool: &'a FramePool,
    counts: &'a CaptureCounts,
    line: &'a mut Line,
    parts: &'a mut Vec<PartRecord>,
    /// Allocation counts after warm-up, and the frame they were taken at.
    steady: &'a mut Option<(AllocationCounts, u64)>,
    /// The capture thread has sent its last event.
    ended: bool,
    travel: Duration,
}

impl Loop<'_> {
    /// Takes over what the capture thread counted.
    fn sync_counts(&mut self) {
        let counters = &mut self.line.counters;
        counters.stalls = self.counts.stalls.load(Ordering::Relaxed);
        counters.dropped_frames = self.counts.dropped_frames.load(Ordering::Relaxed);
        let unreported = self.counts.unreported.swap(0, Ordering::Relaxed);
        if unreported > 0 {
            error!("{unreported} part(s) found judging too far behind to take them: rejected by default");
            counters.count_unjudged(unreported);
        }
    }

    /// After judging stopped: the parts captured meanwhile keep their rejects and are counted,
    /// up to the capture thread's last event.
    fn drain(&mut self) {
        while !self.ended {
            match self.events.recv() {
                Ok(Event::Part(part, frame)) => {
                    if let Some(frame) = frame {
                        self.pool.give(frame);
                    }
                    warn!(
                        "frame {}: not judged (the loop is ending): rejected by default",
                        part.sequence
                    );
                    let record = unjudged(&part, self.travel, &mut self.line.counters);
                    if self.parts.len() < self.parts.capacity() {
                        self.parts.push(record);
                    }
                }
                Ok(Event::End(end)) => {
                    if let Err(e) = end {
                        error!("{e:#}");
                    }
                    self.ended = true;
                }
                Err(_) => self.ended = true,
            }
        }
        self.sync_counts();
    }
}

/// A part no decision was made for: its provisional reject at `captured + travel` fires.
fn unjudged(part: &Part, travel: Duration, counters: &mut Counters) -> PartRecord {
    let record = PartRecord {
        rejected: true,
        failsafe: true,
        reject_at: part.ticket.map(|_| part.captured + travel),
        ..PartRecord::new(part)
    };
    counters.failsafes += 1;
    counters.rejected_by_default += 1;
    counters.count(&record, None);
    record
}

/// What start-up opens before the first frame.
struct Started {
    actuator: Actuator,
    line: Line,
    sim: Option<Arc<Mutex<SimRecord>>>,
    listener: Option<UpdateListener>,
}

impl Inspector {
    pub fn new(backbone: Backbone, config: RunConfig) -> Inspector {
        let state = Arc::new(DeviceState::default());
        let loaded = bank_store(&config, &backbone)
            .load()
            .and_then(|(bank, origin)| Installed::new(&bank, origin));
        match loaded {
            Ok(installed) => state.installed.store(Some(Arc::new(installed))),
            Err(e) => error!(
                "no usable bank ({e:#}): every part gets the fail-safe action {:?}",
                config.failsafe.action
            ),
        }
        Inspector {
            pre: Preprocessor::new(&backbone.meta),
            patch_scores: Vec::with_capacity(backbone.meta.grid() * backbone.meta.grid()),
            backbone,
            state,
            current: None,
            roi_view: RgbImage::new(0, 0),
            sticky: Sticky::default(),
            probation: Probation::default(),
            judging_time: Duration::ZERO,
            stop: Arc::new(AtomicBool::new(false)),
            config,
        }
    }

    /// The loop ends between frames once `flag` is set (e.g. by a SIGTERM handler).
    pub fn stop_when(&mut self, flag: Arc<AtomicBool>) {
        self.stop = flag;
    }

    /// What the device reports on `GET /status`.
    pub fn state(&self) -> &Arc<DeviceState> {
        &self.state
    }

    /// Runs until the source ends, `max_frames` frames were taken, the stop flag is set or a
    /// fault ends the loop (in the outcome, with the summary). An error when it cannot start.
    pub fn run(&mut self, source: &mut dyn FrameSource, max_frames: Option<u64>) -> Result<Outcome> {
        let Started {
            actuator,
            mut line,
            sim,
            listener,
        } = match self.start() {
            Ok(started) => started,
            Err(e) => {
                error!("{e:#}: cannot start inspecting");
                if self.config.failsafe.action == FailsafeAction::StopLine {
                    assert_stop_line(self.config.failsafe.stop_line.as_ref());
                }
                return Err(e);
            }
        };
        let mut parts = Vec::with_capacity(max_frames.unwrap_or(PART_RECORDS).min(1 << 20) as usize);
        let mut steady = None;
        let (result, stopped) =
            self.capture_and_judge(source, max_frames, &actuator, &mut line, &mut parts, &mut steady);
        // The stop line first: parts keep coming while the rest shuts down.
        if let Err(e) = &result {
            error!("{e:#}: applying the fail-safe");
            assert_stop_line(self.config.failsafe.stop_line.as_ref());
        } else if stopped {
            warn!("stopped between frames");
            if self.config.failsafe.action == FailsafeAction::StopLine {
                assert_stop_line(self.config.failsafe.stop_line.as_ref());
            }
        }
        let memory = memory_report(steady, line.counters.frames);
        if let Some(listener) = listener {
            listener.stop();
        }
        let late = actuator.shutdown();
        if late.pulses > 0 {
            error!(
                "{} reject pulse(s) could not be on time: {} part(s) escaped the gate",
                late.pulses, late.parts
            );
        }
        if let Some(auditor) = line.auditor {
            line.counters.audit_not_saved = auditor.finish();
        }
        let timing_error = sim
            .as_ref()
            .and_then(|s| max_timing_error_ms(&s.lock().unwrap_or_else(|e| e.into_inner())));
        let summary = line.counters.summary(timing_error, memory, late);
        info!("{}", line.counters.line());
        Ok(Outcome {
            summary,
            parts,
            sim,
            stopped,
            fault: result.err(),
        })
    }

    /// Takes frames on a capture thread and judges them here until capture ends, a fail-safe
    /// ends the loop or the stop flag is set (then `true`); the parts captured meanwhile are
    /// counted.
    fn capture_and_judge(
        &mut self,
        source: &mut dyn FrameSource,
        max_frames: Option<u64>,
        actuator: &Actuator,
        line: &mut Line,
        parts: &mut Vec<PartRecord>,
        steady: &mut Option<(AllocationCounts, u64)>,
    ) -> (Result<()>, bool) {
        let pool = FramePool::for_config(&self.config);
        let counts = CaptureCounts::default();
        let (events_in, events) = sync_channel(QUEUE_CAPACITY);
        let capture_config = self.config.clone();
        let stop_capture = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let capture = Capture {
                config: &capture_config,
                actuator,
                events: events_in,
                pool: &pool,
                counts: &counts,
                stop: &stop_capture,
                max_frames,
            };
            let spawned = std::thread::Builder::new()
                .name("ucad-capture".into())
                .spawn_scoped(scope, move || capture.run(source));
            if let Err(e) = spawned {
                let failed = anyhow::Error::new(e).context("cannot start the capture thread");
                return (Err(failed), false);
            }
            let mut judging = Loop {
                events: &events,
                actuator,
                pool: &pool,
                counts: &counts,
                line,
                parts,
                steady,
                ended: false,
                travel: self.config.reject.travel_delay,
            };
            let outcome = self.judge_parts(&mut judging);
            stop_capture.store(true, Ordering::Release);
            judging.drain();
            outcome
        })
    }

    /// The frame pool, the reject line, the audit writer and the update listener, and the bank.
    fn start(&mut self) -> Result<Started> {
        reserve_frame_pool(self.config.memory.frame_pool_bytes()?)?;
        let threads = crate::parallel::use_threads(self.config.runtime.threads)?;
        report_panics_from_the_heap();
        open_stop_line(self.config.failsafe.stop_line.as_ref())?;
        let (reject_line, sim) = open_line(&self.config.reject.line)?;
        let auditor = match &self.config.audit {
            Some(audit) => Some(Auditor::start(audit, &self.backbone.meta)?),
            None => None,
        };
        let listener = self.start_listener()?;
        self.adopt_installed_bank(None);
        let tasks = self.current.as_ref().map_or(0, |i| i.detector.tasks.len());
        let c = &self.config;
        // Also the first record this thread logs, so that the logger's buffers exist before the
        // first frame.
        info!(
            "inspecting with {} task(s) of {}, {:?} routing, reject {:?} after capture for {:?}, \
             fail-safe {:?} after {:?}, frame pool {} MiB, backbone on {threads} thread(s) in {}, audit {}",
            tasks,
            c.bank.path.display(),
            c.routing.mode,
            c.reject.travel_delay,
            c.reject.pulse_width,
            c.failsafe.action,
            c.failsafe.deadline,
            c.memory.frame_pool_mib,
            self.backbone.arithmetic,
            c.audit
                .as_ref()
                .map_or("off".into(), |a| format!("{} (≤ {} MiB)", a.dir.display(), a.max_mib)),
        );
        Ok(Started {
            actuator: Actuator::start(reject_line),
            line: Line {
                auditor,
                counters: Counters::new(tasks),
            },
            sim,
            listener,
        })
    }

    /// Judges the captured parts until capture ends, a fail-safe ends the loop, or the stop
    /// flag is set (then `true`).
    fn judge_parts(&mut self, run: &mut Loop) -> (Result<()>, bool) {
        let mut last_log = Instant::now();
        loop {
            if self.stop.load(Ordering::Acquire) {
                return (Ok(()), true);
            }
            let event = match run.events.recv_timeout(STOP_POLL) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    run.ended = true;
                    return (Err(anyhow::anyhow!("the capture thread ended")), false);
                }
            };
            let counters = &mut run.line.counters;
            if counters.frames == WARM_UP_FRAMES && run.steady.is_none() {
                *run.steady = allocation_counts().map(|a| (a, counters.frames));
            }
            let record = match event {
                Event::End(end) => {
                    run.ended = true;
                    run.sync_counts();
                    return (end, false);
                }
                Event::Part(part, Some(mut frame)) => {
                    self.adopt_installed_bank(Some(&mut run.line.counters));
                    let record = self.inspect(&part, &mut frame, run.actuator, run.line);
                    run.pool.give(frame);
                    record
                }
                Event::Part(part, None) => {
                    error!(
                        "frame {}: not judged (every frame buffer waits for judging): rejected by default",
                        part.sequence
                    );
                    unjudged(&part, run.travel, &mut run.line.counters)
                }
            };
            run.sync_counts();
            *self.state.totals.lock().unwrap_or_else(|e| e.into_inner()) = run.line.counters.totals();
            if run.parts.len() < run.parts.capacity() {
                run.parts.push(record);
            }
            if record.failsafe && self.config.failsafe.action == FailsafeAction::StopLine {
                let late = anyhow::anyhow!("frame {} could not be judged in time", record.sequence);
                return (Err(late), false);
            }
            if last_log.elapsed() >= self.config.log_every {
                info!("{}", run.line.counters.line());
                last_log = Instant::now();
            }
        }
    }

    /// Starts the update listener when the config asks for one.
    fn start_listener(&self) -> Result<Option<UpdateListener>> {
        let Some(update) = &self.config.update else {
            return Ok(None);
        };
        let trusted = update
            .trusted_keys
            .iter()
            .map(|path| read_public_key(path))
            .collect::<Result<Vec<_>>>()?;
        let policy = UpdatePolicy {
            trusted,
            line: update.line.clone(),
            backbone: backbone_spec(&self.config, &self.backbone),
            capacity: self.config.bank.capacity(),
            max_bytes: mib(update.max_mib)?,
            request_deadline: crate::update::http::DEADLINE,
        };
        let store = bank_store(&self.config, &self.backbone);
        UpdateListener::start(&update.listen, policy, store, self.state.clone()).map(Some)
    }

    /// Takes the installed bank when it changed (only ever between frames, so that a frame is
    /// judged with one bank from start to end). Routing state is reset: task numbers may mean
    /// other products in the new bank.
    fn adopt_installed_bank(&mut self, counters: Option<&mut Counters>) {
        let latest = self.state.installed.load_full();
        let same = match (&latest, &self.current) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        self.current = latest;
        self.sticky = Sticky::default();
        self.probation = Probation::default();
        if let Some(counters) = counters {
            counters.bank_swaps += 1;
            let tasks = self.current.as_ref().map_or(0, |i| i.detector.tasks.len());
            counters.rejects_per_task.resize(tasks, 0);
            info!(
                "frame {} on: bank version {:?}",
                counters.frames,
                self.current.as_ref().map(|i| i.version)
            );
        }
    }

    /// Judges one frame; a pass decided in time withdraws the part's provisional reject, every
    /// other outcome keeps it (the fail-safe).
    fn inspect(&mut self, part: &Part, frame: &mut Frame, actuator: &Actuator, line: &mut Line) -> PartRecord {
        let deadline = self.config.failsafe.deadline;
        let mut record = PartRecord::new(part);
        let counters = &mut line.counters;
        let age = part.captured.elapsed();
        let judged = if age + self.judging_time > deadline {
            error!(
                "frame {}: {age:.0?} old, too late to judge by its deadline (judging takes {:.0?})",
                part.sequence, self.judging_time
            );
            counters.rejected_by_default += 1;
            None
        } else {
            let judged = self.judge_guarded(frame, counters);
            // An average over about the last 8 frames.
            self.judging_time = (self.judging_time * 7 + (part.captured.elapsed() - age)) / 8;
            judged
        };
        let in_time = part.captured.elapsed() <= deadline;
        match judged {
            Some(judgement) if in_time => {
                record.task = Some(judgement.task);
                record.bank_version = self.current.as_ref().map(|i| i.version);
                record.relative_score = judgement.relative();
                record.rejected = judgement.rejected();
            }
            Some(_) => {
                error!(
                    "frame {}: judged after its deadline: rejected by default",
                    part.sequence
                );
                counters.rejected_by_default += 1;
            }
            None => {}
        }
        let pass = record.task.is_some() && !record.rejected;
        if pass && part.ticket.is_some_and(|ticket| !actuator.cancel(ticket)) {
            error!(
                "frame {}: passed, but the reject gate is already committed to it: rejected by default",
                part.sequence
            );
            counters.rejected_by_default += 1;
            record.task = None;
        }
        if record.task.is_none() {
            record.failsafe = true;
            record.rejected = true;
            counters.failsafes += 1;
        }
        let mut lap = Lap::start();
        if record.rejected {
            record.reject_at = part.ticket.map(|_| part.captured + self.config.reject.travel_delay);
            if let Some(auditor) = &mut line.auditor {
                in_frame_pool(|| self.offer_audit(auditor, frame, &record));
            }
        }
        let counters = &mut line.counters;
        if record.task.is_some() {
            lap.mark(counters, Stage::Decision);
        }
        counters.count(&record, Some(part.captured.elapsed()));
        debug!(
            "frame {}: task {:?} score−threshold {:+.4} rejected {} failsafe {} truth {:?}",
            record.sequence, record.task, record.relative_score, record.rejected, record.failsafe, record.truth
        );
        record
    }

    /// The frame's judgement; `None` — the fail-safe — for an unknown product or a fault, an
    /// error or a panic alike (logged and counted). A bank that faults on each of its first
    /// frames is demoted.
    fn judge_guarded(&mut self, frame: &mut Frame, counters: &mut Counters) -> Option<Judgement> {
        let Some(installed) = self.current.clone() else {
            error!("frame {}: no bank loaded", frame.sequence);
            return None;
        };
        let mut bank_stage = false;
        let judged = contained(|| {
            in_frame_pool(|| {
                let tensor = self.prepare(frame, counters)?;
                bank_stage = true;
                #[cfg(feature = "fault-injection")]
                super::fault_injection::panic_if_chosen(frame.sequence);
                self.judge(&installed.detector, &tensor, counters)
            })
        });
        let fault = match judged {
            Ok(verdict) => {
                self.probation.proven = true;
                if verdict.is_none() {
                    counters.unknown_products += 1;
                    warn!(
                        "frame {}: no learned product explains it (unknown product)",
                        frame.sequence
                    );
                }
                return verdict;
            }
            Err(Fault::Error(message)) => message,
            Err(Fault::Panic(message)) => {
                counters.judging_panics += 1;
                // Routing state may be half updated.
                self.sticky = Sticky::default();
                format!("judging panicked: {message}")
            }
        };
        error!("frame {}: {fault}", frame.sequence);
        if bank_stage && !self.probation.proven {
            self.probation.faults += 1;
            if self.probation.faults >= DEMOTE_AFTER {
                self.demote(&installed, &fault, counters);
            }
        }
        None
    }

    /// Sends a bank that faulted on each of its first frames back to the last-known-good one
    /// (on disk too, so that a restart does not run it again); with none, every part gets the
    /// fail-safe. Says so in the log and on `/status`.
    fn demote(&mut self, bad: &Arc<Installed>, fault: &str, counters: &mut Counters) {
        let reason = format!(
            "bank version {} faulted on its first {DEMOTE_AFTER} frames ({fault})",
            bad.version
        );
        error!("{reason}: demoting it");
        let store = bank_store(&self.config, &self.backbone);
        let fallback = match bad.origin {
            Origin::LastGood => Err(anyhow::anyhow!("it is the last-known-good bank")),
            Origin::Current | Origin::Pushed => store.demote().and_then(|bank| Installed::new(&bank, Origin::LastGood)),
        };
        let replacement = match fallback {
            Ok(good) => {
                warn!("back on the last-known-good bank version {}", good.version);
                Some(Arc::new(good))
            }
            Err(e) => {
                error!("no last-known-good bank to go back to ({e:#}): every part gets the fail-safe");
                None
            }
        };
        // Unless a push replaced the faulty bank meanwhile.
        self.state.installed.compare_and_swap(&Some(bad.clone()), replacement);
        *self.state.demoted.lock().unwrap_or_else(|e| e.into_inner()) = Some(Demotion {
            version: bad.version,
            reason,
        });
        counters.bank_demotions += 1;
        self.adopt_installed_bank(Some(counters));
    }

    fn offer_audit(&self, auditor: &mut Auditor, frame: &Frame, record: &PartRecord) {
        let detector = self.current.as_ref().map(|i| &i.detector);
        auditor.offer(|slot| {
            slot.sequence = record.sequence;
            slot.label.clear();
            slot.threshold = 0.0;
            slot.relative_patches.clear();
            match (record.task, detector) {
                (Some(task), Some(detector)) => {
                    let task = &detector.tasks[task];
                    slot.label.push_str(&task.name);
                    slot.threshold = task.threshold;
                    slot.relative_patches.extend(task.relative(&self.patch_scores));
                }
                _ => slot.label.push_str("failsafe"),
            }
            slot.jpeg.clear();
            if frame.jpeg {
                // As captured: a frame that failed to decode is saved as the camera sent it.
                slot.jpeg.extend_from_slice(&frame.encoded);
            } else {
                copy_image(&frame.image, &mut slot.frame);
            }
        });
    }

    /// The frame decoded and cut to the region of interest, as the network's input.
    fn prepare(&mut self, frame: &mut Frame, counters: &mut Counters) -> Result<Tensor> {
        let mut lap = Lap::start();
        frame.decode()?;
        lap.mark(counters, Stage::Decode);
        let tensor = self.preprocess(&frame.image)?;
        lap.mark(counters, Stage::Preprocess);
        Ok(tensor)
    }

    /// The frame's judgement (the sticky task as the first guess while routing is sticky),
    /// `None` for an unknown product; its patch scores are moved to `self.patch_scores`.
    fn judge(&mut self, detector: &Detector, tensor: &Tensor, counters: &mut Counters) -> Result<Option<Judgement>> {
        let first_guess = self.sticky.first_guess(self.config.routing);
        let mut lap = Lap::start();
        let mut judgement = detector.judge_image(&self.backbone, tensor, first_guess, &mut |stage| {
            lap.mark(counters, stage)
        })?;
        self.patch_scores = std::mem::take(&mut judgement.patch_scores);
        let previous = self.sticky.follow(&judgement);
        if judgement.unknown {
            return Ok(None);
        }
        if previous.is_some_and(|task| task != judgement.task) {
            counters.routing_switches += 1;
        }
        counters.judged += 1;
        Ok(Some(judgement))
    }

    /// The region of interest as the network's input tensor.
    fn preprocess(&mut self, image: &RgbImage) -> Result<Tensor> {
        let Some(roi) = self.config.roi else {
            return self.pre.tensor(image);
        };
        roi.check(Some(image.dimensions()))?;
        self.roi_view = image::imageops::crop_imm(image, roi.x, roi.y, roi.width, roi.height).to_image();
        self.pre.tensor(&self.roi_view)
    }
}

/// Why judging a frame failed.
#[derive(Debug, PartialEq)]
enum Fault {
    Error(String),
    Panic(String),
}

/// Runs a frame's judging so that a panic in it is a fault like an error, which the loop
/// survives: the part gets the fail-safe.
fn contained<T>(judge: impl FnOnce() -> Result<T>) -> Result<T, Fault> {
    match catch_unwind(AssertUnwindSafe(judge)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Fault::Error(format!("{e:#}"))),
        Err(panic) => Err(Fault::Panic(panic_message(panic.as_ref()).to_string())),
    }
}

/// The device's bank files, for the configured bank and this backbone.
fn bank_store(config: &RunConfig, backbone: &Backbone) -> BankStore {
    BankStore::new(
        &config.bank.path,
        backbone_spec(config, backbone),
        config.bank.capacity(),
    )
}

/// What installed and pushed banks are checked against.
fn backbone_spec(config: &RunConfig, backbone: &Backbone) -> BackboneSpec {
    backbone
        .spec()
        .allowing_precision_mismatch(config.runtime.allow_precision_mismatch)
}

/// Heap and pool allocations per frame since warm-up, pool use and peak RSS.
fn memory_report(steady: Option<(AllocationCounts, u64)>, frames: u64) -> MemoryReport {
    let (pool_size, pool_peak) = frame_pool_bytes();
    let per_frame = steady.and_then(|(before, at)| {
        let frames = frames.checked_sub(at).filter(|f| *f > 0)? as f64;
        let now = allocation_counts()?;
        Some((
            (now.heap - before.heap) as f64 / frames,
            (now.pool - before.pool) as f64 / frames,
        ))
    });
    MemoryReport {
        allocations_per_frame: per_frame.map(|p| p.0),
        pool_allocations_per_frame: per_frame.map(|p| p.1),
        frame_pool_bytes: pool_size as u64,
        frame_pool_peak_bytes: pool_peak as u64,
        peak_rss_bytes: peak_rss_bytes(),
    }
}

fn max_timing_error_ms(record: &SimRecord) -> Option<f64> {
    record
        .edges
        .iter()
        .map(|e| {
            let (a, b) = (e.actual, e.intended);
            (if a > b { a - b } else { b - a }).as_secs_f64() * 1e3
        })
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_judging_is_contained_as_a_fault_like_an_error() {
        crate::alloc::report_panics_from_the_heap();
        let panicked = contained(|| -> Result<()> { in_frame_pool(|| panic!("injected at frame {}", 7)) });
        assert_eq!(panicked, Err(Fault::Panic("injected at frame 7".into())));
        let failed = contained(|| -> Result<()> { anyhow::bail!("no features") });
        assert_eq!(failed, Err(Fault::Error("no features".into())));
        assert_eq!(contained(|| Ok(3)), Ok(3));
    }
}
