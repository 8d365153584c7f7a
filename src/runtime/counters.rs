//! What the loop counts, in fixed memory, and the summary it writes on exit.

use std::fmt;
use std::time::{Duration, Instant};

use heapless::HistoryBuffer;
use serde::Serialize;

use super::capture::Part;
use super::schedule::Late;
use super::source::Truth;
use crate::detect::Stage;
pub use crate::update::state::Failsafe;
use crate::update::state::{FailsafeCounts, LatencyHistogram, MqttReport, ProductCount, Totals};

/// One judged (or fail-safed) part, for tests and audits.
#[derive(Debug, Clone, Copy)]
pub struct PartRecord {
    pub sequence: u64,
    pub captured: Instant,
    pub truth: Option<Truth>,
    /// Task the part was scored against; `None` when the fail-safe decided.
    pub task: Option<usize>,
    /// Version of the bank that judged the part.
    pub bank_version: Option<u64>,
    /// Image score minus the task's threshold.
    pub relative_score: f32,
    pub rejected: bool,
    /// Why the fail-safe decided the part, when it did.
    pub failsafe: Option<Failsafe>,
    /// When the reject pulse was scheduled to start.
    pub reject_at: Option<Instant>,
}

impl PartRecord {
    pub fn new(part: &Part) -> PartRecord {
        PartRecord {
            sequence: part.sequence,
            captured: part.captured,
            truth: part.truth,
            task: None,
            bank_version: None,
            relative_score: f32::NAN,
            rejected: false,
            failsafe: None,
            reject_at: None,
        }
    }
}

/// Latencies kept for the percentiles (the most recent ones).
const LATENCY_WINDOW: usize = 4096;

const STAGES: usize = 7;

/// Times consecutive stages: each mark charges the time since the previous one.
pub(crate) struct Lap(Instant);

impl Lap {
    pub fn start() -> Lap {
        Lap(Instant::now())
    }

    pub fn mark(&mut self, counters: &mut Counters, stage: Stage) {
        let now = Instant::now();
        counters.stage_time[stage as usize] += now - self.0;
        self.0 = now;
    }
}

/// Mean milliseconds per judged frame in each stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageMeans {
    pub decode: f64,
    pub preprocess: f64,
    pub plain_pass: f64,
    pub routing: f64,
    pub prompted_pass: f64,
    pub knn: f64,
    pub decision: f64,
}

impl StageMeans {
    pub fn total(&self) -> f64 {
        self.decode + self.preprocess + self.plain_pass + self.routing + self.prompted_pass + self.knn + self.decision
    }

    pub fn backbone(&self) -> f64 {
        self.plain_pass + self.prompted_pass
    }
}

pub(crate) struct Counters {
    pub frames: u64,
    /// Frames that went through the model (not fail-safed before).
    pub judged: u64,
    stage_time: [Duration; STAGES],
    pub rejects: u64,
    pub failsafes: u64,
    /// The same by reason.
    pub failsafe_reasons: FailsafeCounts,
    /// Parts whose decision came too late or never (judging behind): their provisional reject
    /// fired (included in `failsafes`).
    pub rejected_by_default: u64,
    /// Frames whose judging panicked (fail-safed; included in `failsafes`).
    pub judging_panics: u64,
    /// Banks sent back to the last-known-good one for faulting on their first frames.
    pub bank_demotions: u64,
    /// Parts no learned product explains (fail-safed; included in `failsafes`).
    pub unknown_products: u64,
    pub stalls: u64,
    pub dropped_frames: u64,
    pub audit_not_saved: u64,
    /// Messages published to the MQTT broker and dropped (`None` without `[mqtt]`).
    pub mqtt: Option<MqttReport>,
    pub routing_switches: u64,
    pub bank_swaps: u64,
    /// Parts with ground truth, and how the decisions compared with it.
    pub known_parts: u64,
    pub escapes: u64,
    pub false_rejects: u64,
    latencies_ms: HistoryBuffer<f32, LATENCY_WINDOW>,
    /// Every part the loop took, default rejects included (the window above holds the judged).
    pub latency: LatencyHistogram,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub frames: u64,
    pub parts: u64,
    /// Parts rejected on time (late pulses are escapes, not rejects).
    pub rejects: u64,
    /// Parts judged and rejected per product, by name across bank swaps (from the device's
    /// state: the loop counts them there).
    pub products: Vec<ProductCount>,
    /// Defective parts that passed, and parts whose reject pulse could not be on time (counted
    /// when ground truth is known or a pulse was late).
    pub escapes: Option<u64>,
    pub false_rejects: Option<u64>,
    pub failsafe_rejects: u64,
    /// The same by reason.
    pub failsafes_by_reason: FailsafeCounts,
    /// Parts whose decision came too late or never: their provisional reject fired.
    pub rejected_by_default: u64,
    /// Reject pulses (of parts, or held over unseen parts) whose line rose later than the
    /// tolerance after their start: those parts passed the gate.
    pub late_pulses: u64,
    pub judging_panics: u64,
    pub bank_demotions: u64,
    pub unknown_products: u64,
    pub stalls: u64,
    pub dropped_frames: u64,
    pub audit_not_saved: u64,
    /// Messages published to the MQTT broker and dropped (`None` without `[mqtt]`).
    pub mqtt: Option<MqttReport>,
    pub routing_switches: u64,
    pub bank_swaps: u64,
    pub reject_timing_error_ms_max: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub stages_ms: StageMeans,
    #[serde(flatten)]
    pub memory: MemoryReport,
}

impl fmt::Display for Summary {
    /// What `ucad run` prints when the loop ends.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let show = |v: Option<u64>| v.map_or("—".to_string(), |v| v.to_string());
        writeln!(
            f,
            "parts {} rejected {} (per product {}) escapes {} false rejects {} fail-safe {} (rejected by default {}, \
             judging panics {}, bank demotions {}); late reject pulses {}",
            self.parts,
            self.rejects,
            (self.products.iter())
                .map(|p| format!("{} {}", p.product, p.rejects))
                .collect::<Vec<_>>()
                .join(", "),
            show(self.escapes),
            show(self.false_rejects),
            self.failsafe_rejects,
            self.rejected_by_default,
            self.judging_panics,
            self.bank_demotions,
            self.late_pulses
        )?;
        writeln!(
            f,
            "latency p50 {:.1} ms p99 {:.1} ms; reject timing error max {} ms; dropped frames {}; audit not saved {}",
            self.p50_ms.unwrap_or(f64::NAN),
            self.p99_ms.unwrap_or(f64::NAN),
            self.reject_timing_error_ms_max
                .map_or("—".into(), |e| format!("{e:.3}")),
            self.dropped_frames,
            self.audit_not_saved
        )?;
        if let Some(mqtt) = self.mqtt {
            writeln!(
                f,
                "MQTT: {} messages published, {} dropped; {} rejects and fail-safes at QoS 1, {} acknowledged",
                mqtt.published, mqtt.dropped, mqtt.urgent, mqtt.acknowledged
            )?;
        }
        write!(f, "{}", self.stages_ms)?;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let m = &self.memory;
        writeln!(
            f,
            "memory: {} heap allocations/frame, {} frame-pool allocations/frame (pool peak {:.1} of {:.0} MiB); peak RSS {}",
            m.allocations_per_frame.map_or("—".into(), |a| format!("{a:.3}")),
            m.pool_allocations_per_frame.map_or("—".into(), |a| format!("{a:.0}")),
            mib(m.frame_pool_peak_bytes),
            mib(m.frame_pool_bytes),
            m.peak_rss_bytes.map_or("—".into(), |b| format!("{:.0} MiB", mib(b)))
        )
    }
}

impl fmt::Display for StageMeans {
    /// A table of the stages' mean ms per frame and their shares.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let total = self.total();
        writeln!(f, "{:<22} {:>9} {:>7}", "stage (mean per frame)", "ms", "share")?;
        for (name, ms) in [
            ("decode", self.decode),
            ("preprocess", self.preprocess),
            ("backbone, plain pass", self.plain_pass),
            ("routing", self.routing),
            ("backbone, prompted", self.prompted_pass),
            ("kNN scoring", self.knn),
            ("decision", self.decision),
        ] {
            writeln!(
                f,
                "{name:<22} {ms:>9.3} {:>6.1}%",
                100.0 * ms / total.max(f64::MIN_POSITIVE)
            )?;
        }
        writeln!(
            f,
            "{:<22} {total:>9.3}   frame time / backbone time = {:.3}",
            "total",
            total / self.backbone().max(f64::MIN_POSITIVE)
        )
    }
}

/// What the allocator reports for a run's summary.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemoryReport {
    /// System-heap allocations (all threads) per frame after warm-up.
    pub allocations_per_frame: Option<f64>,
    /// Allocations per frame after warm-up served by the fixed frame pool.
    pub pool_allocations_per_frame: Option<f64>,
    pub frame_pool_bytes: u64,
    pub frame_pool_peak_bytes: u64,
    pub peak_rss_bytes: Option<u64>,
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            frames: 0,
            judged: 0,
            stage_time: [Duration::ZERO; STAGES],
            rejects: 0,
            failsafes: 0,
            failsafe_reasons: FailsafeCounts::default(),
            rejected_by_default: 0,
            judging_panics: 0,
            bank_demotions: 0,
            unknown_products: 0,
            stalls: 0,
            dropped_frames: 0,
            audit_not_saved: 0,
            mqtt: None,
            routing_switches: 0,
            bank_swaps: 0,
            known_parts: 0,
            escapes: 0,
            false_rejects: 0,
            latencies_ms: HistoryBuffer::new(),
            latency: LatencyHistogram::default(),
        }
    }

    /// Counts a part; `latency` is capture to decision, for a part judged.
    pub fn count(&mut self, part: &PartRecord, latency: Option<Duration>) {
        self.frames += 1;
        if let Some(latency) = latency {
            self.latencies_ms.write(latency.as_secs_f32() * 1e3);
            self.latency.record(latency.as_secs_f64() * 1e3);
        }
        if let Some(reason) = part.failsafe {
            self.failsafes += 1;
            self.failsafe_reasons.add(reason, 1);
        }
        if part.rejected {
            self.rejects += 1;
        }
        if let Some(truth) = part.truth {
            self.known_parts += 1;
            self.escapes += (truth.defective && !part.rejected) as u64;
            self.false_rejects += (!truth.defective && part.rejected) as u64;
        }
    }

    /// Parts that never reached judging: rejected by default.
    pub(crate) fn count_unjudged(&mut self, parts: u64) {
        self.frames += parts;
        self.rejects += parts;
        self.failsafes += parts;
        self.failsafe_reasons.add(Failsafe::NotJudged, parts);
        self.rejected_by_default += parts;
    }

    /// The latency at quantile `q` of the recent window; sorts a copy on the stack, so that
    /// the periodic log line allocates nothing.
    fn percentile(&self, q: f64) -> Option<f64> {
        let window = self.latencies_ms.as_slice();
        let last = window.len().checked_sub(1)?;
        let mut sorted = [0f32; LATENCY_WINDOW];
        let sorted = &mut sorted[..window.len()];
        sorted.copy_from_slice(window);
        sorted.sort_unstable_by(f32::total_cmp);
        Some(sorted[(q * last as f64).round() as usize] as f64)
    }

    /// The periodic log line (formatted where it is written).
    pub(crate) fn log_line(&self) -> impl std::fmt::Display + '_ {
        CountersLine(self)
    }

    pub fn totals(&self) -> Totals {
        Totals {
            frames: self.frames,
            rejects: self.rejects,
            failsafe_rejects: self.failsafes,
            failsafes_by_reason: self.failsafe_reasons,
            rejected_by_default: self.rejected_by_default,
            judging_panics: self.judging_panics,
            bank_demotions: self.bank_demotions,
            unknown_products: self.unknown_products,
            stalls: self.stalls,
            dropped_frames: self.dropped_frames,
            routing_switches: self.routing_switches,
            bank_swaps: self.bank_swaps,
            latency: self.latency,
        }
    }

    fn stage_means(&self) -> StageMeans {
        let mean = |stage: Stage| {
            let total = self.stage_time[stage as usize].as_secs_f64() * 1e3;
            if self.judged == 0 {
                0.0
            } else {
                total / self.judged as f64
            }
        };
        StageMeans {
            decode: mean(Stage::Decode),
            preprocess: mean(Stage::Preprocess),
            plain_pass: mean(Stage::PlainPass),
            routing: mean(Stage::Routing),
            prompted_pass: mean(Stage::PromptedPass),
            knn: mean(Stage::Knn),
            decision: mean(Stage::Decision),
        }
    }

    /// The summary; `late` pulses move their parts from the rejects to the escapes.
    pub fn summary(&self, timing_error_ms: Option<f64>, memory: MemoryReport, late: Late) -> Summary {
        let known = self.known_parts > 0;
        Summary {
            frames: self.frames,
            parts: self.frames,
            rejects: self.rejects.saturating_sub(late.parts),
            products: Vec::new(),
            escapes: (known || late.parts > 0).then_some(self.escapes + late.parts),
            false_rejects: known.then_some(self.false_rejects),
            failsafe_rejects: self.failsafes,
            failsafes_by_reason: self.failsafe_reasons,
            rejected_by_default: self.rejected_by_default,
            late_pulses: late.pulses,
            judging_panics: self.judging_panics,
            bank_demotions: self.bank_demotions,
            unknown_products: self.unknown_products,
            stalls: self.stalls,
            dropped_frames: self.dropped_frames,
            audit_not_saved: self.audit_not_saved,
            mqtt: self.mqtt,
            routing_switches: self.routing_switches,
            bank_swaps: self.bank_swaps,
            reject_timing_error_ms_max: timing_error_ms,
            p50_ms: self.percentile(0.5),
            p99_ms: self.percentile(0.99),
            stages_ms: self.stage_means(),
            memory,
        }
    }
}

struct CountersLine<'a>(&'a Counters);

impl std::fmt::Display for CountersLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.0;
        write!(
            f,
            "frames {} rejects {} failsafe {} (by default {}, panics {}) unknown {} stalls {} dropped {} switches {} \
             p50 {:.1} ms p99 {:.1} ms",
            c.frames,
            c.rejects,
            c.failsafes,
            c.rejected_by_default,
            c.judging_panics,
            c.unknown_products,
            c.stalls,
            c.dropped_frames,
            c.routing_switches,
            c.percentile(0.5).unwrap_or(f64::NAN),
            c.percentile(0.99).unwrap_or(f64::NAN)
        )
    }
}
