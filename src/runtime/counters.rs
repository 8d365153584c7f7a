//! What the loop counts, in fixed memory, and the summary it writes on exit.

use std::time::Duration;

use heapless::HistoryBuffer;
use serde::Serialize;

use super::inspection::PartRecord;

/// Latencies kept for the percentiles (the most recent ones).
const LATENCY_WINDOW: usize = 4096;

pub struct Counters {
    pub frames: u64,
    pub rejects: u64,
    /// Rejects per task, sized for the bank at start-up.
    pub rejects_per_task: Vec<u64>,
    pub failsafes: u64,
    pub stalls: u64,
    pub routing_switches: u64,
    /// Parts with ground truth, and how the decisions compared with it.
    pub known_parts: u64,
    pub escapes: u64,
    pub false_rejects: u64,
    latencies_ms: HistoryBuffer<f32, LATENCY_WINDOW>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub frames: u64,
    pub parts: u64,
    pub rejects: u64,
    pub rejects_per_task: Vec<u64>,
    pub escapes: Option<u64>,
    pub false_rejects: Option<u64>,
    pub failsafe_rejects: u64,
    pub stalls: u64,
    pub routing_switches: u64,
    pub reject_timing_error_ms_max: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub allocations_per_frame: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
}

impl Counters {
    pub fn new(tasks: usize) -> Counters {
        Counters {
            frames: 0,
            rejects: 0,
            rejects_per_task: vec![0; tasks],
            failsafes: 0,
            stalls: 0,
            routing_switches: 0,
            known_parts: 0,
            escapes: 0,
            false_rejects: 0,
            latencies_ms: HistoryBuffer::new(),
        }
    }

    /// Counts a decided part; `latency` is capture to decision.
    pub fn count(&mut self, part: &PartRecord, latency: Duration) {
        self.frames += 1;
        self.latencies_ms.write(latency.as_secs_f32() * 1e3);
        if part.rejected {
            self.rejects += 1;
            if let Some(slot) = part.task.and_then(|t| self.rejects_per_task.get_mut(t)) {
                *slot += 1;
            }
        }
        if let Some(truth) = part.truth {
            self.known_parts += 1;
            self.escapes += (truth.defective && !part.rejected) as u64;
            self.false_rejects += (!truth.defective && part.rejected) as u64;
        }
    }

    fn percentile(&self, q: f64) -> Option<f64> {
        let mut sorted: Vec<f32> = self.latencies_ms.as_slice().to_vec();
        sorted.sort_by(f32::total_cmp);
        let last = sorted.len().checked_sub(1)?;
        Some(sorted[(q * last as f64).round() as usize] as f64)
    }

    /// The periodic log line.
    pub fn line(&self) -> String {
        format!(
            "frames {} rejects {} {:?} failsafe {} stalls {} switches {} p50 {:.1} ms p99 {:.1} ms",
            self.frames,
            self.rejects,
            self.rejects_per_task,
            self.failsafes,
            self.stalls,
            self.routing_switches,
            self.percentile(0.5).unwrap_or(f64::NAN),
            self.percentile(0.99).unwrap_or(f64::NAN)
        )
    }

    pub fn summary(&self, timing_error_ms: Option<f64>, allocations: Option<f64>, peak_rss: Option<u64>) -> Summary {
        let known = self.known_parts > 0;
        Summary {
            frames: self.frames,
            parts: self.frames,
            rejects: self.rejects,
            rejects_per_task: self.rejects_per_task.clone(),
            escapes: known.then_some(self.escapes),
            false_rejects: known.then_some(self.false_rejects),
            failsafe_rejects: self.failsafes,
            stalls: self.stalls,
            routing_switches: self.routing_switches,
            reject_timing_error_ms_max: timing_error_ms,
            p50_ms: self.percentile(0.5),
            p99_ms: self.percentile(0.99),
            allocations_per_frame: allocations,
            peak_rss_bytes: peak_rss,
        }
    }
}
