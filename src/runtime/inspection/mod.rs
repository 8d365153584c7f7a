//! The inspection loop: a capture thread takes each frame and queues its part's provisional
//! reject; this thread judges it — ROI → preprocess → route → score → decide — and withdraws the
//! reject for a pass decided in time. A part that cannot be judged in time (late, a fault, a
//! panic) keeps its reject, or the line is stopped; counters throughout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use image::RgbImage;
use log::{error, info, warn};

mod guard;
mod judging_loop;

use super::capture::{Capture, CaptureCounts, FramePool};
use super::config::{mib, FailsafeAction, RunConfig};
use super::counters::{Counters, MemoryReport, PartRecord, Summary};
use super::open_line;
use super::reject::{Actuator, SimRecord};
use super::schedule::QUEUE_CAPACITY;
use super::source::FrameSource;
use super::stop_line::{assert_stop_line, open_stop_line};
use crate::alloc::{
    allocation_counts, frame_pool_bytes, peak_rss_bytes, report_panics_from_the_heap, reserve_frame_pool,
    AllocationCounts,
};
use crate::backbone::BackboneSpec;
use crate::backbone::{Backbone, Preprocessor};
use crate::runtime::audit::Auditor;
use crate::runtime::mqtt::MqttPublisher;
use crate::update::install::Installer;
use crate::update::listener::UpdateListener;
use crate::update::policy::UpdatePolicy;
use crate::update::pull::{Poller, PullConfig};
use crate::update::signing::read_public_key;
use crate::update::state::{DeviceState, Installed};
use crate::update::store::BankStore;
use guard::{Probation, Sticky};
use judging_loop::{Books, Loop};

/// Parts whose records an endless run keeps (the first ones; counters cover the rest).
const PART_RECORDS: u64 = 4096;

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
    /// Where each task of the current bank is counted in the device state's products.
    product_slots: Vec<usize>,
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

/// What start-up opens before the first frame.
struct Started {
    actuator: Actuator,
    books: Books,
    sim: Option<Arc<Mutex<SimRecord>>>,
    updates: Updates,
}

/// The update listener and the poller, as configured; both stop when dropped.
#[derive(Default)]
struct Updates {
    _listener: Option<UpdateListener>,
    _poller: Option<Poller>,
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
            product_slots: Vec::new(),
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
            mut books,
            sim,
            updates,
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
            self.capture_and_judge(source, max_frames, &actuator, &mut books, &mut parts, &mut steady);
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
        let memory = memory_report(steady, books.counters.frames);
        drop(updates);
        let late = actuator.shutdown();
        if late.pulses > 0 {
            error!(
                "{} reject pulse(s) could not be on time: {} part(s) escaped the gate",
                late.pulses, late.parts
            );
        }
        if let Some(auditor) = books.auditor {
            books.counters.audit_not_saved = auditor.finish();
        }
        if let Some(mqtt) = books.mqtt {
            books.counters.mqtt = Some(mqtt.finish(&books.counters.totals()));
        }
        let timing_error = sim
            .as_ref()
            .and_then(|s| max_timing_error_ms(&s.lock().unwrap_or_else(|e| e.into_inner())));
        let mut summary = books.counters.summary(timing_error, memory, late);
        summary.products = self.state.products.lock().unwrap_or_else(|e| e.into_inner()).clone();
        info!("{}", books.counters.log_line());
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
        books: &mut Books,
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
                books,
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

    /// The frame pool, the reject line, the audit writer, the MQTT publisher, the update
    /// listener and poller, and the bank.
    fn start(&mut self) -> Result<Started> {
        reserve_frame_pool(self.config.memory.frame_pool_bytes()?)?;
        let threads = crate::parallel::use_threads(self.config.runtime.threads)?;
        report_panics_from_the_heap();
        open_stop_line(self.config.failsafe.stop_line.as_ref())?;
        let (reject_line, sim) = open_line(&self.config.reject.line)?;
        let auditor = match &self.config.audit {
            Some(audit) => Some(Auditor::start(
                audit,
                &self.backbone.meta,
                self.config.roi,
                self.state.clone(),
            )?),
            None => None,
        };
        let mqtt = match &self.config.mqtt {
            Some(mqtt) => Some(MqttPublisher::start(mqtt, &self.state)?),
            None => None,
        };
        let updates = self.start_updates()?;
        self.adopt_installed_bank(None);
        let tasks = self.current.as_ref().map_or(0, |i| i.detector.tasks().len());
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
            books: Books {
                auditor,
                mqtt,
                counters: Counters::new(),
            },
            sim,
            updates,
        })
    }

    /// Starts the update listener and the poller the config asks for.
    fn start_updates(&self) -> Result<Updates> {
        let Some(update) = &self.config.update else {
            return Ok(Updates::default());
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
        let installer = Arc::new(Installer::new(policy, store, self.state.clone()));
        let listener = match &update.listen {
            Some(listen) => Some(UpdateListener::start(listen, installer.clone())?),
            None => None,
        };
        let poller = match &update.source {
            Some(source) => {
                let pull = PullConfig {
                    source: source.clone(),
                    ca_file: update.ca_file.clone(),
                    every: update.poll,
                    timeout: update.fetch_timeout,
                };
                Some(Poller::start(pull, installer)?)
            }
            None => None,
        };
        Ok(Updates {
            _listener: listener,
            _poller: poller,
        })
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
