//! The inspection loop: source → ROI → preprocess → route → score → decide → reject line, with
//! the fail-safe whenever a part cannot be judged in time, and counters throughout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use image::RgbImage;
use log::{debug, error, info, warn};
use tract_core::prelude::Tensor;

use super::alloc::{allocations, peak_rss_bytes};
use super::config::{FailsafeAction, LineConfig, RoutingConfig, RoutingMode, RunConfig};
use super::counters::{Counters, Summary};
use super::reject::{Actuator, RejectLine, SimRecord, SimulatedLine};
use super::schedule::Pulse;
use super::source::{Frame, FrameSource};
use crate::backbone::{Backbone, Preprocessor};
use crate::bank::format::load_for_backbone;
use crate::bank::Capacity;
use crate::detect::{image_score, Detector};

/// Frames before allocation counting starts (buffers and caches fill on the first ones).
const WARM_UP_FRAMES: u64 = 5;

/// One judged (or fail-safed) part, for tests and audits.
#[derive(Debug, Clone, Copy)]
pub struct PartRecord {
    pub sequence: u64,
    pub captured: Instant,
    pub truth: Option<super::source::Truth>,
    /// Task the part was scored against; `None` when the fail-safe decided.
    pub task: Option<usize>,
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
struct Sticky {
    task: Option<usize>,
    since_reroute: u32,
}

pub struct Inspector {
    backbone: Backbone,
    /// `None` when the bank could not be loaded: every part gets the fail-safe action.
    detector: Option<Detector>,
    pre: Preprocessor,
    roi_view: RgbImage,
    config: RunConfig,
    sticky: Sticky,
}

impl Inspector {
    pub fn new(backbone: Backbone, config: RunConfig) -> Inspector {
        let capacity = Capacity {
            tasks: config.bank.capacity_tasks,
            rows_per_task: config.bank.capacity_rows,
        };
        let detector = load_for_backbone(&config.bank.path, &backbone.file_sha256)
            .map_err(anyhow::Error::from)
            .and_then(|bank| {
                bank.check_capacity(capacity, &config.bank.path.display().to_string())?;
                Detector::new(&bank)
            });
        let detector = match detector {
            Ok(d) => Some(d),
            Err(e) => {
                error!(
                    "no usable bank ({e:#}): every part gets the fail-safe action {:?}",
                    config.failsafe.action
                );
                None
            }
        };
        Inspector {
            pre: Preprocessor::new(&backbone.meta),
            backbone,
            detector,
            roi_view: RgbImage::new(0, 0),
            sticky: Sticky {
                task: None,
                since_reroute: 0,
            },
            config,
        }
    }

    /// Runs until the source ends or `max_frames` frames were taken.
    pub fn run(&mut self, source: &mut dyn FrameSource, max_frames: Option<u64>) -> Result<Outcome> {
        let (line, sim) = open_line(&self.config.reject.line)?;
        let actuator = Actuator::start(line);
        let tasks = self.detector.as_ref().map_or(0, |d| d.tasks.len());
        let mut counters = Counters::new(tasks);
        let mut parts = Vec::with_capacity(max_frames.unwrap_or(0).min(1 << 20) as usize);
        let mut frame = Frame::new();
        let mut last_log = Instant::now();
        let mut steady_allocations = None;
        let result = loop {
            if max_frames.is_some_and(|m| counters.frames >= m) {
                break Ok(());
            }
            if counters.frames == WARM_UP_FRAMES {
                steady_allocations = allocations().map(|a| (a, counters.frames));
            }
            let waited = Instant::now();
            match source.next(&mut frame) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e.context("the frame source failed")),
            }
            if waited.elapsed() > self.stall_limit() {
                warn!("source stalled for {:.0} ms", waited.elapsed().as_secs_f64() * 1e3);
                counters.stalls += 1;
            }
            let record = self.inspect(&frame, &actuator, &mut counters);
            if parts.len() < parts.capacity() {
                parts.push(record);
            }
            if record.failsafe && self.config.failsafe.action == FailsafeAction::StopLine {
                break Err(anyhow::anyhow!("frame {} could not be judged in time", record.sequence));
            }
            if last_log.elapsed().as_secs_f64() >= self.config.log_every_s {
                info!("{}", counters.line());
                last_log = Instant::now();
            }
        };
        let allocations_per_frame = steady_allocations.and_then(|(before, at)| {
            let frames = counters.frames.checked_sub(at).filter(|f| *f > 0)?;
            Some((allocations()? - before) as f64 / frames as f64)
        });
        actuator.shutdown();
        if let Err(e) = &result {
            error!("{e:#}: applying the fail-safe");
            self.stop_line();
        }
        let timing_error = sim
            .as_ref()
            .and_then(|s| max_timing_error_ms(&s.lock().expect("sim record")));
        let summary = counters.summary(timing_error, allocations_per_frame, peak_rss_bytes());
        info!("{}", counters.line());
        result.map(|()| Outcome { summary, parts, sim })
    }

    fn stall_limit(&self) -> Duration {
        Duration::from_secs_f64(self.config.failsafe.stall_ms / 1e3)
    }

    /// Judges one frame and schedules its reject; the fail-safe decides when judging is not
    /// possible in time.
    fn inspect(&mut self, frame: &Frame, actuator: &Actuator, counters: &mut Counters) -> PartRecord {
        let deadline = Duration::from_secs_f64(self.config.failsafe.deadline_ms / 1e3);
        let mut record = PartRecord {
            sequence: frame.sequence,
            captured: frame.captured,
            truth: frame.truth,
            task: None,
            relative_score: f32::NAN,
            rejected: false,
            failsafe: false,
            reject_at: None,
        };
        let judged = if frame.captured.elapsed() > deadline {
            None
        } else {
            match self.judge(&frame.image, counters) {
                Ok(j) => Some(j),
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
                record.relative_score = relative;
                record.rejected = relative > 0.0;
            }
            _ => {
                record.failsafe = true;
                record.rejected = true;
                counters.failsafes += 1;
            }
        }
        if record.rejected {
            let at = frame.captured + Duration::from_secs_f64(self.config.reject.travel_delay_ms / 1e3);
            let width = Duration::from_secs_f64(self.config.reject.pulse_width_ms / 1e3);
            if !actuator.schedule(Pulse::at(at, width)) {
                error!("frame {}: reject queue full; asserting the stop line", frame.sequence);
                self.stop_line();
            }
            record.reject_at = Some(at);
        }
        counters.count(&record, frame.captured.elapsed());
        debug!(
            "frame {}: task {:?} score−threshold {:+.4} rejected {} failsafe {} truth {:?}",
            record.sequence, record.task, record.relative_score, record.rejected, record.failsafe, record.truth
        );
        record
    }

    /// (task, image score − threshold) for an image.
    fn judge(&mut self, image: &RgbImage, counters: &mut Counters) -> Result<(usize, f32)> {
        let detector = self.detector.as_ref().context("no bank loaded")?;
        let view = match self.config.roi {
            Some(roi) => {
                anyhow::ensure!(
                    roi.x + roi.width <= image.width() && roi.y + roi.height <= image.height(),
                    "roi {roi:?} lies outside the {}×{} frame",
                    image.width(),
                    image.height()
                );
                self.roi_view = image::imageops::crop_imm(image, roi.x, roi.y, roi.width, roi.height).to_image();
                &self.roi_view
            }
            None => image,
        };
        let tensor: Tensor = self.pre.tensor(view)?;
        let plain = self.backbone.features(tensor.clone(), None)?;
        let mut task = route(&mut self.sticky, self.config.routing, detector, &plain, counters);
        let mut relative = relative_score(detector, &self.backbone, &tensor, &plain, task)?;
        if self.config.routing.mode == RoutingMode::Sticky && relative > 0.0 && self.sticky.since_reroute > 0 {
            // A would-be reject in sticky mode: make sure it is not a different product.
            let fresh = detector.route(&plain).task;
            if fresh != task {
                counters.routing_switches += 1;
                self.sticky.task = Some(fresh);
                task = fresh;
                relative = relative_score(detector, &self.backbone, &tensor, &plain, task)?;
            }
            self.sticky.since_reroute = 0;
        }
        Ok((task, relative))
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

/// Per frame: route every time. Sticky: keep the last task for up to `reroute_every` frames.
fn route(
    sticky: &mut Sticky,
    config: RoutingConfig,
    detector: &Detector,
    plain: &[f32],
    counters: &mut Counters,
) -> usize {
    if config.mode == RoutingMode::Sticky && sticky.since_reroute < config.reroute_every {
        if let Some(task) = sticky.task {
            sticky.since_reroute += 1;
            return task;
        }
    }
    let task = detector.route(plain).task;
    if sticky.task.is_some_and(|t| t != task) {
        counters.routing_switches += 1;
    }
    *sticky = Sticky {
        task: Some(task),
        since_reroute: 0,
    };
    task
}

fn relative_score(detector: &Detector, backbone: &Backbone, image: &Tensor, plain: &[f32], task: usize) -> Result<f32> {
    let patches = detector.score_task(backbone, image, plain, task)?;
    Ok(image_score(&patches) - detector.tasks[task].threshold)
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
