//! Judging one frame with the installed bank: routing state, faults contained (an error or a
//! panic gives the part the fail-safe), and a new bank that faults on its first frames demoted.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use anyhow::Result;
use image::RgbImage;
use log::{error, info, warn};
use tract_core::prelude::Tensor;

use super::{bank_store, Inspector};
use crate::alloc::in_frame_pool;
use crate::detect::{Detector, Judgement, Stage};
use crate::runtime::capture::panic_message;
use crate::runtime::config::{RoutingConfig, RoutingMode};
use crate::runtime::counters::{Counters, Failsafe, Lap};
use crate::runtime::source::Frame;
use crate::update::state::{Demotion, Installed};
use crate::update::store::Origin;

/// A bank that faults on each of its first this many frames is sent back to the last-known-good
/// one.
pub(crate) const DEMOTE_AFTER: u32 = 3;

/// Route state of sticky routing.
#[derive(Default)]
pub(super) struct Sticky {
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
pub(super) struct Probation {
    /// It has judged a frame.
    proven: bool,
    faults: u32,
}

impl Inspector {
    /// Takes the installed bank when it changed (only ever between frames, so that a frame is
    /// judged with one bank from start to end). Routing state is reset: task numbers may mean
    /// other products in the new bank.
    pub(super) fn adopt_installed_bank(&mut self, counters: Option<&mut Counters>) {
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
        let names = self
            .current
            .iter()
            .flat_map(|i| i.detector.tasks().iter().map(|t| t.name.as_str()));
        self.product_slots = self.state.product_slots(names);
        if let Some(counters) = counters {
            counters.bank_swaps += 1;
            info!(
                "frame {} on: bank version {:?}",
                counters.frames,
                self.current.as_ref().map(|i| i.version)
            );
        }
    }

    /// The frame's judgement, or why it gets the fail-safe: no bank, an unknown product, or a
    /// fault — an error or a panic alike (logged and counted). A bank that faults on each of its first
    /// frames is demoted.
    pub(super) fn judge_guarded(&mut self, frame: &mut Frame, counters: &mut Counters) -> Result<Judgement, Failsafe> {
        let Some(installed) = self.current.clone() else {
            error!("frame {}: no bank loaded", frame.sequence);
            return Err(Failsafe::NoBank);
        };
        let mut bank_stage = false;
        let judged = contained(|| {
            in_frame_pool(|| {
                let tensor = self.prepare(frame, counters)?;
                bank_stage = true;
                #[cfg(feature = "fault-injection")]
                crate::runtime::fault_injection::panic_if_chosen(frame.sequence);
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
                return verdict.ok_or(Failsafe::UnknownProduct);
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
        Err(Failsafe::Fault)
    }

    /// Sends a bank that faulted on each of its first frames back to the last-known-good one
    /// (on disk too, so that a restart does not run it again); with none, every part gets the
    /// fail-safe. Says so in the log and on `/status`.
    pub(super) fn demote(&mut self, bad: &Arc<Installed>, fault: &str, counters: &mut Counters) {
        let reason = format!(
            "bank version {} faulted on its first {DEMOTE_AFTER} frames ({fault})",
            bad.version
        );
        error!("{reason}: demoting it");
        let store = bank_store(&self.config, &self.backbone);
        let fallback = match bad.origin {
            Origin::LastGood => Err(anyhow::anyhow!("it is the last-known-good bank")),
            Origin::Current | Origin::Pushed | Origin::Pulled => store
                .demote(bad.version)
                .and_then(|bank| Installed::new(&bank, Origin::LastGood)),
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

    /// The frame decoded and cut to the region of interest, as the network's input.
    pub(super) fn prepare(&mut self, frame: &mut Frame, counters: &mut Counters) -> Result<Tensor> {
        let mut lap = Lap::start();
        frame.decode()?;
        lap.mark(counters, Stage::Decode);
        let tensor = self.preprocess(&frame.image)?;
        lap.mark(counters, Stage::Preprocess);
        Ok(tensor)
    }

    /// The frame's judgement (the sticky task as the first guess while routing is sticky),
    /// `None` for an unknown product; its patch scores are moved to `self.patch_scores`.
    pub(super) fn judge(
        &mut self,
        detector: &Detector,
        tensor: &Tensor,
        counters: &mut Counters,
    ) -> Result<Option<Judgement>> {
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
    pub(super) fn preprocess(&mut self, image: &RgbImage) -> Result<Tensor> {
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
