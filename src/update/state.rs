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
    /// The audit folder and the last rejects saved there (for the status page).
    pub audit: Mutex<AuditLog>,
    /// Parts judged per product, by name across bank swaps (a product appears when a bank with
    /// it is adopted).
    pub products: Mutex<Vec<ProductCount>>,
}

/// The last rejects the audit writer saved, newest last.
#[derive(Debug, Default)]
pub struct AuditLog {
    /// The audit folder (`None` without `[audit]`).
    pub dir: Option<std::path::PathBuf>,
    pub recent: std::collections::VecDeque<AuditedPart>,
}

/// The rejects `GET /status` lists (and `GET /audit/NAME` serves the files of).
pub const RECENT_REJECTS: usize = 12;

#[derive(Debug, Clone, Serialize)]
pub struct AuditedPart {
    pub part: u64,
    /// The product that judged it, or `failsafe`.
    pub label: String,
    pub saved_unix_ms: u64,
    /// File names in the audit folder: the frame, and its heatmap overlay for a judged part.
    pub frame: String,
    pub heatmap: Option<String>,
}

impl AuditLog {
    /// Lists a saved reject, and forgets those whose frame the disk budget has deleted.
    pub fn add(&mut self, part: AuditedPart) {
        if self.recent.len() == RECENT_REJECTS {
            self.recent.pop_front();
        }
        self.recent.push_back(part);
        if let Some(dir) = &self.dir {
            self.recent.retain(|p| dir.join(&p.frame).exists());
        }
    }

    /// The path of `name` when it is one of the recent rejects' files: nothing else in the
    /// folder (or outside it) is served.
    pub fn file(&self, name: &str) -> Option<std::path::PathBuf> {
        let listed = (self.recent.iter()).any(|p| p.frame == name || p.heatmap.as_deref() == Some(name));
        self.dir.as_ref().filter(|_| listed).map(|dir| dir.join(name))
    }
}

/// Products counted since start-up, at most (each bank swap may bring new names).
pub const MAX_PRODUCTS: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct ProductCount {
    pub product: String,
    pub parts: u64,
    pub rejects: u64,
}

impl DeviceState {
    /// Where each task of `names` (a bank's, in order) is counted: found by name, or added
    /// (beyond `MAX_PRODUCTS` names, a new one is not counted: `usize::MAX`).
    pub fn product_slots<'a>(&self, names: impl Iterator<Item = &'a str>) -> Vec<usize> {
        let mut products = self.products.lock().unwrap_or_else(|e| e.into_inner());
        names
            .map(|name| match products.iter().position(|p| p.product == name) {
                Some(slot) => slot,
                None if products.len() >= MAX_PRODUCTS => usize::MAX,
                None => {
                    products.push(ProductCount {
                        product: name.to_string(),
                        parts: 0,
                        rejects: 0,
                    });
                    products.len() - 1
                }
            })
            .collect()
    }

    /// Counts a judged part of the product in `slot`; takes nothing from the heap.
    pub fn count_product(&self, slot: usize, rejected: bool) {
        let mut products = self.products.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(product) = products.get_mut(slot) {
            product.parts += 1;
            product.rejects += rejected as u64;
        }
    }
}

/// The MQTT publisher's side of `GET /status` and of the summary.
#[derive(Debug, Default)]
pub struct MqttCounters {
    pub connected: AtomicBool,
    /// PUBLISH packets written to the broker's connection (a resent one counts again).
    pub published: AtomicU64,
    /// Rejects and fail-safes handed to the client at QoS 1, and PUBACKs the broker sent.
    pub urgent: AtomicU64,
    pub acknowledged: AtomicU64,
    /// Messages dropped: the loop's queue or the client's was full (a slow or lost broker).
    pub dropped: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MqttReport {
    pub connected: bool,
    pub published: u64,
    pub urgent: u64,
    pub acknowledged: u64,
    pub dropped: u64,
}

impl MqttCounters {
    pub fn report(&self) -> MqttReport {
        MqttReport {
            connected: self.connected.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            urgent: self.urgent.load(Ordering::Relaxed),
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
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

/// Why a part got the fail-safe action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failsafe {
    /// No usable bank is loaded.
    NoBank,
    /// No learned product explains the part.
    UnknownProduct,
    /// Judging failed or panicked.
    Fault,
    /// Too old to be judged by its deadline, or judged after it.
    Late,
    /// It passed, but the reject gate had already committed to it.
    GateCommitted,
    /// Never judged: no frame buffer was free, the capture queue was full, or the loop was
    /// ending.
    NotJudged,
}

impl Failsafe {
    pub const ALL: [Failsafe; 6] = [
        Failsafe::NoBank,
        Failsafe::UnknownProduct,
        Failsafe::Fault,
        Failsafe::Late,
        Failsafe::GateCommitted,
        Failsafe::NotJudged,
    ];

    /// As in JSON and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Failsafe::NoBank => "no_bank",
            Failsafe::UnknownProduct => "unknown_product",
            Failsafe::Fault => "fault",
            Failsafe::Late => "late",
            Failsafe::GateCommitted => "gate_committed",
            Failsafe::NotJudged => "not_judged",
        }
    }
}

/// Fail-safe parts by reason, in fixed memory (counted without the heap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailsafeCounts([u64; Failsafe::ALL.len()]);

impl FailsafeCounts {
    pub fn add(&mut self, reason: Failsafe, parts: u64) {
        self.0[reason as usize] += parts;
    }

    pub fn get(&self, reason: Failsafe) -> u64 {
        self.0[reason as usize]
    }
}

impl Serialize for FailsafeCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(Failsafe::ALL.len()))?;
        for reason in Failsafe::ALL {
            map.serialize_entry(reason.name(), &self.get(reason))?;
        }
        map.end()
    }
}

/// The counters a device reports on `GET /status` (copied after every frame).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Totals {
    pub frames: u64,
    pub rejects: u64,
    pub failsafe_rejects: u64,
    pub failsafes_by_reason: FailsafeCounts,
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
