//! What the inspection loop and the update listener share: the installed bank, the loop's
//! counters, the listener's refusals (both reported by `GET /status` and `GET /metrics`), and the
//! last demotion.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use arc_swap::ArcSwapOption;
use serde::Serialize;

use super::store::Origin;
use crate::backbone::Arithmetic;
use crate::bank::Bank;
use crate::detect::Detector;

/// A bank ready to judge frames with.
pub struct Installed {
    pub detector: Detector,
    pub version: u64,
    pub origin: Origin,
    /// What the bank was fitted in (`GET /status` shows it).
    pub arithmetic: Arithmetic,
}

impl Installed {
    pub fn new(bank: &Bank, origin: Origin) -> Result<Installed> {
        Ok(Installed {
            detector: Detector::new(bank)?,
            version: bank.version,
            origin,
            arithmetic: bank.arithmetic,
        })
    }
}

/// What the loop and the listener share.
#[derive(Default)]
pub struct DeviceState {
    /// The bank the next frame is judged with (swapped whole, between frames).
    pub installed: ArcSwapOption<Installed>,
    /// The loop's counters, published after every frame.
    pub totals: Mutex<Totals>,
    /// The last bank the loop sent back to the last-known-good one, and why.
    pub demoted: Mutex<Option<Demotion>>,
    /// Requests the listener answered with a 4xx but 404: damaged or oversized pushes, banks
    /// unsigned, for another line, backbone or capacity or not newer, and also requests too
    /// slow (408) or ended before their head was whole (a port scan's connect and close).
    pub refused_requests: AtomicU64,
    /// What came of polling for pull updates (`None` without `update.source`).
    pub pull: Mutex<Option<PullStatus>>,
    /// The MQTT publisher's counts (`None` without `[mqtt]`).
    pub mqtt: Mutex<Option<Arc<MqttCounters>>>,
}

/// The MQTT publisher's side of `GET /status` and of the summary.
#[derive(Debug, Default)]
pub struct MqttCounters {
    pub connected: AtomicBool,
    /// Messages handed to the broker's connection.
    pub published: AtomicU64,
    /// Messages dropped: the loop's queue or the client's was full (a slow or lost broker).
    pub dropped: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MqttReport {
    pub connected: bool,
    pub published: u64,
    pub dropped: u64,
}

impl MqttCounters {
    pub fn report(&self) -> MqttReport {
        MqttReport {
            connected: self.connected.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The pull updates' side of `GET /status`.
#[derive(Debug, Clone, Serialize)]
pub struct PullStatus {
    pub source: String,
    /// When the manifest was last checked, in seconds since 1970 (`None` before the first check).
    pub checked_unix: Option<u64>,
    /// What came of it: up to date, installed, refused or failed, and why.
    pub outcome: String,
    /// Checks whose manifest or bank was refused, and checks that could not fetch them.
    pub refused: u64,
    pub failed: u64,
}

impl PullStatus {
    pub(crate) fn new(source: &str) -> PullStatus {
        PullStatus {
            source: source.to_string(),
            checked_unix: None,
            outcome: "not checked yet".into(),
            refused: 0,
            failed: 0,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Demotion {
    pub version: u64,
    pub reason: String,
}

/// The counters a device reports on `GET /status` (copied after every frame).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Totals {
    pub frames: u64,
    pub rejects: u64,
    pub failsafe_rejects: u64,
    pub rejected_by_default: u64,
    pub judging_panics: u64,
    pub bank_demotions: u64,
    pub unknown_products: u64,
    pub stalls: u64,
    pub dropped_frames: u64,
    pub routing_switches: u64,
    pub bank_swaps: u64,
    /// Capture to decision of every part the loop took, a default reject included (parts it
    /// never took are only in `rejected_by_default`).
    pub latency: LatencyHistogram,
}

/// Upper bounds of the latency buckets, in milliseconds (a last bucket holds the rest).
pub const LATENCY_BOUNDS_MS: [f64; 10] = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];

/// Parts by latency bucket (each part in the first bucket whose bound it does not exceed) and
/// the sum of their latencies: fixed size, so that counting takes nothing from the heap.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencyHistogram {
    pub parts: [u64; LATENCY_BOUNDS_MS.len() + 1],
    pub sum_ms: f64,
}

impl LatencyHistogram {
    pub fn record(&mut self, ms: f64) {
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.parts[bucket] += 1;
        self.sum_ms += ms;
    }
}
