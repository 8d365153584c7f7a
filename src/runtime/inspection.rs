//! The inspection loop: source → ROI → preprocess → route → score → decide → reject line, with
//! the fail-safe whenever a part cannot be judged in time, and counters throughout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use image::RgbImage;
use log::{debug, error, info, warn};
use tract_core::prelude::Tensor;

use super::alloc::{
    allocation_counts, frame_pool_bytes, in_frame_pool, peak_rss_bytes, reserve_frame_pool, AllocationCounts,
};
use super::audit::Auditor;
use super::config::{mib, FailsafeAction, LineConfig, RoutingConfig, RoutingMode, RunConfig};
use super::counters::{Counters, Lap, MemoryReport, Stage, Summary};
use super::pixels::copy_image;
use super::reject::{Actuator, RejectLine, SimRecord, SimulatedLine};
use super::schedule::Pulse;
use super::source::{Frame, FrameSource};
use crate::backbone::{Backbone, Preprocessor};
use crate::detect::colour::{colour_of, Colour};
use crate::detect::{image_score, Detector, Routing};
use crate::update::listener::{DeviceState, Installed, UpdateListener, UpdatePolicy};
use crate::update::signing::read_public_key;
use crate::update::store::BankStore;

/// Frames before allocation counting starts (buffers and caches fill on the first ones).
const WARM_UP_FRAMES: u64 = 5;

/// Parts whose records an endless run keeps (the first ones; counters cover the rest).
const PART_RECORDS: u64 = 4096;

/// One judged (or fail-safed) part, for tests and audits.
#[derive(Debug, Clone, Copy)]
pub struct PartRecord {
    pub sequence: u64,
    pub captured: Instant,
    pub truth: Option<super::source::Truth>,
    /// Task the part was scored against; `None` when the fail-safe decided.
    pub task: Option<usize>,
    /// Version of the bank that judged the part.
    pub bank_version: Option<u64>,
    /// Image score minus the task's threshold.
    pub relative_score: f32,
    pub rejected: bool,
    pub failsafe: bool,
    /// When the reject pulse was scheduled to start.
    pub reject_at: Option<Instant>,
}

pub struct Outcome {
    pub summary: Summary,
    pub parts: Vec<PartRecord>,
    /// The simulated line's record, when the line is simulated.
    pub sim: Option<Arc<Mutex<SimRecord>>>,
}

/// Route state of sticky routing.
#[derive(Default)]
struct Sticky {
    task: Option<usize>,
    since_reroute: u32,
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
}

/// What the loop holds while it runs.
struct Line {
    actuator: Actuator,
    auditor: Option<Auditor>,
    counters: Counters,
}

impl Inspector {
    pub fn new(backbone: Backbone, config: RunConfig) -> Inspector {
        let state = Arc::new(DeviceState::default());
        let capacity = config.bank.capacity();
        let loaded = BankStore::new(&config.bank.path, backbone.spec(), capacity)
            .load()
            .and_then(|(bank, origin)| {
                Ok(Installed {
                    detector: Detector::new(&bank)?,
                    version: bank.version,
                    origin,
                })
            });
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
            config,
        }
    }

    /// Runs until the source ends or `max_frames` frames were taken.
    pub fn run(&mut self, source: &mut dyn FrameSource, max_frames: Option<u64>) -> Result<Outcome> {
        reserve_frame_pool(self.config.memory.frame_pool_bytes()?)?;
        let (reject_line, sim) = open_line(&self.config.reject.line)?;
        let auditor = match &self.config.audit {
            Some(audit) => Some(Auditor::start(audit, &self.backbone.meta)?),
            None => None,
        };
        let listener = self.start_listener()?;
        self.adopt_installed_bank(None);
        let tasks = self.current.as_ref().map_or(0, |i| i.detector.tasks.len());
        let mut line = Line {
            actuator: Actuator::start(reject_line),
            auditor,
            counters: Counters::new(tasks),
        };
        // Also the first record this thread logs, so that the logger's buffers exist before the
        // first frame.
        info!(
            "inspecting with {} task(s) of {}, {:?} routing, reject {:.0} ms after capture for {:.0} ms, \
             fail-safe {:?} after {:.0} ms, frame pool {} MiB, audit {}",
            tasks,
            self.config.bank.path.display(),
            self.config.routing.mode,
            self.config.reject.travel_delay_ms,
            self.config.reject.pulse_width_ms,
            self.config.failsafe.action,
            self.config.failsafe.deadline_ms,
            self.config.memory.frame_pool_mib,
            self.config
                .audit
                .as_ref()
                .map_or("off".into(), |a| format!("{} (≤ {} MiB)", a.dir.display(), a.max_mib)),
        );
        let mut parts = Vec::with_capacity(max_frames.unwrap_or(PART_RECORDS).min(1 << 20) as usize);
        let mut frame = Frame::new();
        let mut last_log = Instant::now();
        let mut steady = None;
        let mut failures = 0;
        let result = loop {
            let counters = &mut line.counters;
            if max_frames.is_some_and(|m| counters.frames >= m) {
                break Ok(());
            }
            if counters.frames == WARM_UP_FRAMES && steady.is_none() {
                steady = allocation_counts().map(|a| (a, counters.frames));
            }
            let previous = (frame.captured, source.dropped());
            let waited = Instant::now();
            match source.next(&mut frame) {
                Ok(true) => failures = 0,
                Ok(false) => break Ok(()),
                Err(e) => {
                    error!("{e:#}");
                    failures += 1;
                    if let Err(stop) = self.blind(waited, Instant::now(), &mut line) {
                        break Err(stop);
                    }
                    if failures > self.config.failsafe.source_retries {
                        break Err(e.context(format!("the frame source failed {failures} times in a row")));
                    }
                    continue;
                }
            }
            if waited.elapsed() > self.stall_limit() {
                warn!("source stalled for {:.0} ms", waited.elapsed().as_secs_f64() * 1e3);
                if let Err(stop) = self.blind(waited, Instant::now(), &mut line) {
                    break Err(stop);
                }
            }
            let dropped = source.dropped().saturating_sub(previous.1);
            if dropped > 0 && line.counters.frames > 0 {
                warn!("the source dropped {dropped} frames before frame {}", frame.sequence);
                line.counters.dropped_frames += dropped;
                if let Err(stop) = self.blind(previous.0, frame.captured, &mut line) {
                    break Err(stop);
                }
            }
            self.adopt_installed_bank(Some(&mut line.counters));
            let record = self.inspect(&mut frame, &mut line);
            *self.state.totals.lock().unwrap_or_else(|e| e.into_inner()) = line.counters.totals();
            if parts.len() < parts.capacity() {
                parts.push(record);
            }
            if record.failsafe && self.config.failsafe.action == FailsafeAction::StopLine {
                break Err(anyhow::anyhow!("frame {} could not be judged in time", record.sequence));
            }
            if last_log.elapsed().as_secs_f64() >= self.config.log_every_s {
                info!("{}", line.counters.line());
                last_log = Instant::now();
            }
        };
        // The stop line first: parts keep coming while the rest shuts down.
        if let Err(e) = &result {
            error!("{e:#}: applying the fail-safe");
            self.stop_line();
        }
        let memory = memory_report(steady, line.counters.frames);
        if let Some(listener) = listener {
            listener.stop();
        }
        line.actuator.shutdown();
        if let Some(auditor) = line.auditor {
            line.counters.audit_not_saved = auditor.not_saved;
            auditor.finish();
        }
        let timing_error = sim
            .as_ref()
            .and_then(|s| max_timing_error_ms(&s.lock().expect("sim record")));
        let summary = line.counters.summary(timing_error, memory);
        info!("{}", line.counters.line());
        result.map(|()| Outcome { summary, parts, sim })
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
            backbone: self.backbone.spec(),
            capacity: self.config.bank.capacity(),
            max_bytes: mib(update.max_mib)?,
            request_deadline: crate::update::http::DEADLINE,
        };
        let store = BankStore::new(&self.config.bank.path, self.backbone.spec(), policy.capacity);
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

    fn stall_limit(&self) -> Duration {
        Duration::from_secs_f64(self.config.failsafe.stall_ms / 1e3)
    }

    fn travel(&self) -> Duration {
        Duration::from_secs_f64(self.config.reject.travel_delay_ms / 1e3)
    }

    /// The fail-safe for parts that passed the camera unseen between `from` and `to` (a stall,
    /// a camera error, dropped frames): the reject gate stays active while they pass it, or the
    /// line is stopped (an error ends the loop).
    fn blind(&self, from: Instant, to: Instant, line: &mut Line) -> Result<()> {
        line.counters.stalls += 1;
        let unseen_ms = (to - from).as_secs_f64() * 1e3;
        match self.config.failsafe.action {
            FailsafeAction::Reject => {
                let width = Duration::from_secs_f64(self.config.reject.pulse_width_ms / 1e3).max(to - from);
                error!("no frames for {unseen_ms:.0} ms: the reject gate stays active while those parts pass it");
                if !line.actuator.schedule(Pulse::at(from + self.travel(), width)) {
                    error!("reject queue full; asserting the stop line");
                    self.stop_line();
                }
                Ok(())
            }
            FailsafeAction::StopLine => Err(anyhow::anyhow!("no frames for {unseen_ms:.0} ms: parts passed unseen")),
        }
    }

    /// Judges one frame and schedules its reject; the fail-safe decides when judging is not
    /// possible in time.
    fn inspect(&mut self, frame: &mut Frame, line: &mut Line) -> PartRecord {
        let deadline = Duration::from_secs_f64(self.config.failsafe.deadline_ms / 1e3);
        let mut record = PartRecord {
            sequence: frame.sequence,
            captured: frame.captured,
            truth: frame.truth,
            task: None,
            bank_version: None,
            relative_score: f32::NAN,
            rejected: false,
            failsafe: false,
            reject_at: None,
        };
        let counters = &mut line.counters;
        let judged = if frame.captured.elapsed() > deadline {
            error!("frame {}: past its deadline before judging", frame.sequence);
            None
        } else {
            match in_frame_pool(|| self.judge(frame, counters)) {
                Ok(Some(j)) => Some(j),
                Ok(None) => {
                    counters.unknown_products += 1;
                    warn!(
                        "frame {}: no learned product explains it (unknown product)",
                        frame.sequence
                    );
                    None
                }
                Err(e) => {
                    error!("frame {}: {e:#}", frame.sequence);
                    None
                }
            }
        };
        let in_time = frame.captured.elapsed() <= deadline;
        match judged {
            Some((task, relative)) if in_time => {
                record.task = Some(task);
                record.bank_version = self.current.as_ref().map(|i| i.version);
                record.relative_score = relative;
                record.rejected = relative > 0.0;
            }
            Some(_) => error!("frame {}: judged after its deadline", frame.sequence),
            None => {}
        }
        if record.task.is_none() {
            record.failsafe = true;
            record.rejected = true;
            counters.failsafes += 1;
        }
        let mut lap = Lap::start();
        if record.rejected {
            let at = frame.captured + self.travel();
            let width = Duration::from_secs_f64(self.config.reject.pulse_width_ms / 1e3);
            if !line.actuator.schedule(Pulse::at(at, width)) {
                error!("frame {}: reject queue full; asserting the stop line", frame.sequence);
                self.stop_line();
            }
            record.reject_at = Some(at);
            if let Some(auditor) = &mut line.auditor {
                in_frame_pool(|| self.offer_audit(auditor, frame, &record));
            }
        }
        let counters = &mut line.counters;
        if record.task.is_some() {
            lap.mark(counters, Stage::Decision);
        }
        counters.count(&record, frame.captured.elapsed());
        debug!(
            "frame {}: task {:?} score−threshold {:+.4} rejected {} failsafe {} truth {:?}",
            record.sequence, record.task, record.relative_score, record.rejected, record.failsafe, record.truth
        );
        record
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

    /// (task, image score − threshold) for a frame, `None` for an unknown product; its patch
    /// scores are left in `self.patch_scores`.
    fn judge(&mut self, frame: &mut Frame, counters: &mut Counters) -> Result<Option<(usize, f32)>> {
        let mut lap = Lap::start();
        let installed = self.current.clone().context("no bank loaded")?;
        let detector = &installed.detector;
        frame.decode()?;
        lap.mark(counters, Stage::Decode);
        let tensor = self.preprocess(&frame.image)?;
        lap.mark(counters, Stage::Preprocess);
        let plain = self.backbone.features(tensor.clone(), None)?;
        lap.mark(counters, Stage::PlainPass);
        let colour = colour_of(tensor.try_as_plain_ram()?.as_slice::<f32>()?, &self.backbone.meta);
        let (mut task, mut fresh) = route(
            &mut self.sticky,
            self.config.routing,
            detector,
            (&plain, &colour),
            counters,
        )?;
        lap.mark(counters, Stage::Routing);
        let mut relative = self.score(detector, &tensor, &plain, task, &mut lap, counters)?;
        if relative > 0.0 && fresh.is_none() {
            // A would-be reject in sticky mode: make sure it is not a different product.
            let routing = detector.route(&plain, &colour)?;
            lap.mark(counters, Stage::Routing);
            self.sticky.since_reroute = 0;
            if routing.task != task {
                counters.routing_switches += 1;
                self.sticky.task = Some(routing.task);
                task = routing.task;
                relative = self.score(detector, &tensor, &plain, task, &mut lap, counters)?;
            }
            fresh = Some(routing);
        }
        if let Some(routing) = fresh.filter(|r| r.beyond) {
            let backbone = &self.backbone;
            let verdict = detector.resolve(&routing, self.patch_scores.clone(), |t| {
                detector.tasks[t].patch_scores(&detector.task_features(backbone, &tensor, &plain, t)?)
            })?;
            lap.mark(counters, Stage::Knn);
            if verdict.unknown {
                self.sticky.task = None;
                return Ok(None);
            }
            if verdict.task != task {
                counters.routing_switches += 1;
                (task, self.sticky.task) = (verdict.task, Some(verdict.task));
            }
            relative = image_score(&verdict.patch_scores) - detector.tasks[task].threshold;
            self.patch_scores.clear();
            self.patch_scores.extend_from_slice(&verdict.patch_scores);
        }
        counters.judged += 1;
        Ok(Some((task, relative)))
    }

    /// The region of interest as the network's input tensor.
    fn preprocess(&mut self, image: &RgbImage) -> Result<Tensor> {
        let Some(roi) = self.config.roi else {
            return self.pre.tensor(image);
        };
        anyhow::ensure!(
            roi.x + roi.width <= image.width() && roi.y + roi.height <= image.height(),
            "roi {roi:?} lies outside the {}×{} frame",
            image.width(),
            image.height()
        );
        self.roi_view = image::imageops::crop_imm(image, roi.x, roi.y, roi.width, roi.height).to_image();
        self.pre.tensor(&self.roi_view)
    }

    /// Scores the frame against `task` into `self.patch_scores`; returns image score − threshold.
    fn score(
        &mut self,
        detector: &Detector,
        image: &Tensor,
        plain: &[f32],
        task: usize,
        lap: &mut Lap,
        counters: &mut Counters,
    ) -> Result<f32> {
        let features = detector.task_features(&self.backbone, image, plain, task)?;
        lap.mark(counters, Stage::PromptedPass);
        let index = &detector.tasks[task];
        self.patch_scores.clear();
        self.patch_scores.extend(index.patch_scores(&features)?);
        lap.mark(counters, Stage::Knn);
        Ok(image_score(&self.patch_scores) - index.threshold)
    }

    fn stop_line(&self) {
        let Some(config) = &self.config.failsafe.stop_line else {
            return;
        };
        match open_line(config) {
            Ok((mut line, _)) => {
                if let Err(e) = line.set(true, Instant::now()) {
                    error!("cannot assert the stop line: {e:#}");
                }
            }
            Err(e) => error!("cannot open the stop line: {e:#}"),
        }
    }
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

/// Per frame: route every time. Sticky: keep the last task for up to `reroute_every` frames.
/// The routing comes back when it was done for this frame (`None`: the sticky task).
fn route(
    sticky: &mut Sticky,
    config: RoutingConfig,
    detector: &Detector,
    (plain, colour): (&[f32], &Colour),
    counters: &mut Counters,
) -> Result<(usize, Option<Routing>)> {
    if config.mode == RoutingMode::Sticky && sticky.since_reroute < config.reroute_every {
        if let Some(task) = sticky.task {
            sticky.since_reroute += 1;
            return Ok((task, None));
        }
    }
    let routing = detector.route(plain, colour)?;
    if sticky.task.is_some_and(|t| t != routing.task) {
        counters.routing_switches += 1;
    }
    *sticky = Sticky {
        task: Some(routing.task),
        since_reroute: 0,
    };
    Ok((routing.task, Some(routing)))
}

/// Edge capacity of a simulated line (reserved at start-up).
const SIM_EDGES: usize = 1 << 16;

type OpenedLine = (Box<dyn RejectLine>, Option<Arc<Mutex<SimRecord>>>);

fn open_line(config: &LineConfig) -> Result<OpenedLine> {
    match config {
        LineConfig::Simulated => {
            let (line, record) = SimulatedLine::new(SIM_EDGES);
            Ok((Box::new(line), Some(record)))
        }
        #[cfg(feature = "device")]
        LineConfig::Rppal { pin, active_high } => {
            Ok((Box::new(super::device::RppalLine::open(*pin, *active_high)?), None))
        }
        #[cfg(feature = "device")]
        LineConfig::Gpiocdev {
            chip,
            line,
            active_high,
        } => Ok((
            Box::new(super::device::GpiocdevLine::open(chip, *line, *active_high)?),
            None,
        )),
        #[cfg(not(feature = "device"))]
        LineConfig::Rppal { pin, .. } => {
            anyhow::bail!("GPIO pin {pin}: this build has no rppal support (build with --features device)")
        }
        #[cfg(not(feature = "device"))]
        LineConfig::Gpiocdev { chip, line, .. } => anyhow::bail!(
            "{} line {line}: this build has no GPIO character device support (build with --features device)",
            chip.display()
        ),
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
