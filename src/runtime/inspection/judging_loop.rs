//! The judging side of a run: parts come from the capture thread, each is judged (or gets the
//! fail-safe) and counted; what is captured after judging stops keeps its reject.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Result;
use log::{debug, error, info, warn};

use super::Inspector;
use crate::alloc::{allocation_counts, in_frame_pool, AllocationCounts};
use crate::detect::Stage;
use crate::runtime::audit::Auditor;
use crate::runtime::capture::{CaptureCounts, Event, FramePool, Part};
use crate::runtime::config::FailsafeAction;
use crate::runtime::counters::{Counters, Failsafe, Lap, PartRecord};
use crate::runtime::mqtt::MqttPublisher;
use crate::runtime::pixels::copy_image;
use crate::runtime::reject::Actuator;
use crate::runtime::source::Frame;

/// Frames before allocation counting starts (buffers and caches fill on the first ones).
const WARM_UP_FRAMES: u64 = 5;

/// How often the loop looks at the stop flag while it waits for a frame.
const STOP_POLL: Duration = Duration::from_millis(50);

/// What the loop keeps while it runs: its counters, the audit writer and the MQTT publisher.
pub(super) struct Books {
    pub(super) auditor: Option<Auditor>,
    pub(super) mqtt: Option<MqttPublisher>,
    pub(super) counters: Counters,
}

impl Books {
    /// The counters to the log and the MQTT broker once `every` has passed since `last`.
    fn report_every(&self, every: Duration, last: &mut Instant) {
        if last.elapsed() >= every {
            info!("{}", self.counters.log_line());
            if let Some(mqtt) = &self.mqtt {
                mqtt.counters(&self.counters.totals());
            }
            *last = Instant::now();
        }
    }

    /// Keeps a part's record (the first `records.capacity()`) and publishes it.
    fn record(&self, record: PartRecord, records: &mut Vec<PartRecord>) {
        if records.len() < records.capacity() {
            records.push(record);
        }
        if let Some(mqtt) = &self.mqtt {
            mqtt.part(&record, record.captured.elapsed());
        }
    }
}

/// The judging side of a run: what it reads and updates.
pub(super) struct Loop<'a> {
    pub(super) events: &'a Receiver<Event>,
    pub(super) actuator: &'a Actuator,
    pub(super) pool: &'a FramePool,
    pub(super) counts: &'a CaptureCounts,
    pub(super) books: &'a mut Books,
    pub(super) parts: &'a mut Vec<PartRecord>,
    /// Allocation counts after warm-up, and the frame they were taken at.
    pub(super) steady: &'a mut Option<(AllocationCounts, u64)>,
    /// The capture thread has sent its last event.
    pub(super) ended: bool,
    pub(super) travel: Duration,
}

impl Loop<'_> {
    /// Takes over what the capture thread counted.
    pub(super) fn sync_counts(&mut self) {
        let counters = &mut self.books.counters;
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
    pub(super) fn drain(&mut self) {
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
                    let record = unjudged(&part, self.travel, &mut self.books.counters);
                    self.books.record(record, self.parts);
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
        failsafe: Some(Failsafe::NotJudged),
        reject_at: part.ticket.map(|_| part.captured + travel),
        ..PartRecord::new(part)
    };
    counters.rejected_by_default += 1;
    counters.count(&record, None);
    counters.latency.record(part.captured.elapsed().as_secs_f64() * 1e3);
    record
}

impl Inspector {
    /// Judges the captured parts until capture ends, a fail-safe ends the loop, or the stop
    /// flag is set (then `true`).
    pub(super) fn judge_parts(&mut self, run: &mut Loop) -> (Result<()>, bool) {
        let mut last_log = Instant::now();
        loop {
            if self.stop.load(Ordering::Acquire) {
                return (Ok(()), true);
            }
            let event = match run.events.recv_timeout(STOP_POLL) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => {
                    // No frame (a stalled camera): the counters still go out.
                    run.books.report_every(self.config.log_every, &mut last_log);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    run.ended = true;
                    return (Err(anyhow::anyhow!("the capture thread ended")), false);
                }
            };
            let counters = &mut run.books.counters;
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
                    self.adopt_installed_bank(Some(&mut run.books.counters));
                    let record = self.inspect(&part, &mut frame, run.actuator, run.books);
                    run.pool.give(frame);
                    record
                }
                Event::Part(part, None) => {
                    error!(
                        "frame {}: not judged (every frame buffer waits for judging): rejected by default",
                        part.sequence
                    );
                    unjudged(&part, run.travel, &mut run.books.counters)
                }
            };
            run.sync_counts();
            if let Some(&slot) = record.task.and_then(|task| self.product_slots.get(task)) {
                self.state.count_product(slot, record.rejected);
            }
            let totals = run.books.counters.totals();
            *self.state.totals.lock().unwrap_or_else(|e| e.into_inner()) = totals;
            run.books.record(record, run.parts);
            if record.failsafe.is_some() && self.config.failsafe.action == FailsafeAction::StopLine {
                let late = anyhow::anyhow!("frame {} could not be judged in time", record.sequence);
                return (Err(late), false);
            }
            run.books.report_every(self.config.log_every, &mut last_log);
        }
    }

    /// Judges one frame; a pass decided in time withdraws the part's provisional reject, every
    /// other outcome keeps it (the fail-safe).
    pub(super) fn inspect(
        &mut self,
        part: &Part,
        frame: &mut Frame,
        actuator: &Actuator,
        books: &mut Books,
    ) -> PartRecord {
        let deadline = self.config.failsafe.deadline;
        let mut record = PartRecord::new(part);
        let counters = &mut books.counters;
        let age = part.captured.elapsed();
        let judged = if age + self.judging_time > deadline {
            error!(
                "frame {}: {age:.0?} old, too late to judge by its deadline (judging takes {:.0?})",
                part.sequence, self.judging_time
            );
            counters.rejected_by_default += 1;
            Err(Failsafe::Late)
        } else {
            let judged = self.judge_guarded(frame, counters);
            // An average over about the last 8 frames.
            self.judging_time = (self.judging_time * 7 + (part.captured.elapsed() - age)) / 8;
            judged
        };
        let in_time = part.captured.elapsed() <= deadline;
        match judged {
            Ok(judgement) if in_time => {
                record.task = Some(judgement.task);
                record.bank_version = self.current.as_ref().map(|i| i.version);
                record.relative_score = judgement.relative();
                record.rejected = judgement.rejected();
            }
            Ok(_) => {
                error!(
                    "frame {}: judged after its deadline: rejected by default",
                    part.sequence
                );
                counters.rejected_by_default += 1;
                record.failsafe = Some(Failsafe::Late);
            }
            Err(failsafe) => record.failsafe = Some(failsafe),
        }
        let pass = record.task.is_some() && !record.rejected;
        if pass && part.ticket.is_some_and(|ticket| !actuator.cancel(ticket)) {
            error!(
                "frame {}: passed, but the reject gate is already committed to it: rejected by default",
                part.sequence
            );
            counters.rejected_by_default += 1;
            record.task = None;
            record.failsafe = Some(Failsafe::GateCommitted);
        }
        if record.failsafe.is_some() {
            record.rejected = true;
        }
        let mut lap = Lap::start();
        if record.rejected {
            record.reject_at = part.ticket.map(|_| part.captured + self.config.reject.travel_delay);
            if let Some(auditor) = &mut books.auditor {
                in_frame_pool(|| self.offer_audit(auditor, frame, &record));
            }
        }
        let counters = &mut books.counters;
        if record.task.is_some() {
            lap.mark(counters, Stage::Decision);
        }
        counters.count(&record, Some(part.captured.elapsed()));
        debug!(
            "frame {}: task {:?} score−threshold {:+.4} rejected {} failsafe {:?} truth {:?}",
            record.sequence, record.task, record.relative_score, record.rejected, record.failsafe, record.truth
        );
        record
    }

    pub(super) fn offer_audit(&self, auditor: &mut Auditor, frame: &Frame, record: &PartRecord) {
        let detector = self.current.as_ref().map(|i| &i.detector);
        auditor.offer(|slot| {
            slot.sequence = record.sequence;
            slot.label.clear();
            slot.threshold = 0.0;
            slot.relative_patches.clear();
            match (record.task, detector) {
                (Some(task), Some(detector)) => {
                    let task = &detector.tasks()[task];
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
}
