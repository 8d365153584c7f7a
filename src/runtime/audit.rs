//! Saving rejected parts for audit: the frame as captured and its heatmap, written by a thread
//! of their own so that disk speed never delays a decision, within a disk budget (the oldest
//! saved parts are deleted first).
//!
//! The hot path only copies into one of a fixed set of slots allocated at start-up; when every
//! slot is waiting for the disk, the part is counted as not saved.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use image::RgbImage;
use log::{error, warn};

use super::config::{AuditConfig, Roi};
use super::pixels::{decode_jpeg, encode_jpeg};
use crate::alloc::in_frame_pool;
use crate::backbone::{BackboneMeta, Preprocessor};
use crate::detect::image_score;
use crate::render::overlay::{render, FrameMap, Verdict};
use crate::update::state::{AuditedPart, DeviceState};

/// A rejected part on its way to the disk.
pub(crate) struct AuditSlot {
    pub sequence: u64,
    /// The task's name, or `failsafe` when no task judged the part.
    pub label: String,
    pub threshold: f32,
    /// The frame as captured: its JPEG when the camera sent one, else its pixels.
    pub jpeg: Vec<u8>,
    pub frame: RgbImage,
    /// Patch scores minus the threshold; empty for a fail-safe reject.
    pub relative_patches: Vec<f32>,
}

pub(crate) struct Auditor {
    free: Receiver<Box<AuditSlot>>,
    work: Option<SyncSender<Box<AuditSlot>>>,
    writer: Option<JoinHandle<()>>,
    /// Parts offered while every slot was in use.
    dropped: u64,
    /// Parts the writer could not save (a full or read-only disk).
    failed: Arc<AtomicU64>,
}

impl Auditor {
    /// Reserves `config.queue` slots and starts the writer (slots take a frame's size on
    /// their first use).
    /// The writer lists what it saved in `state.audit` (the status page shows the last ones).
    /// With a region of interest, the maps are of that region and are drawn there.
    pub fn start(
        config: &AuditConfig,
        meta: &BackboneMeta,
        roi: Option<Roi>,
        state: Arc<DeviceState>,
    ) -> Result<Auditor> {
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("cannot create the audit folder {}", config.dir.display()))?;
        let limit = config
            .max_mib
            .checked_mul(1 << 20)
            .with_context(|| format!("audit.max_mib = {} is more bytes than a disk holds", config.max_mib))?;
        let mut budget = DiskBudget::scan(&config.dir, limit)?;
        state.audit.lock().unwrap_or_else(|e| e.into_inner()).dir = Some(config.dir.clone());
        let (free_tx, free) = sync_channel(config.queue);
        let (work, work_rx) = sync_channel::<Box<AuditSlot>>(config.queue);
        let patches = meta.grid() * meta.grid();
        for _ in 0..config.queue {
            let slot = AuditSlot {
                sequence: 0,
                label: String::with_capacity(64),
                threshold: 0.0,
                jpeg: Vec::new(),
                frame: RgbImage::new(0, 0),
                relative_patches: Vec::with_capacity(patches),
            };
            free_tx.send(Box::new(slot)).expect("the receiver is alive");
        }
        let meta = meta.clone();
        let failed = Arc::new(AtomicU64::new(0));
        let failures = failed.clone();
        let writer = std::thread::Builder::new()
            .name("ucad-audit".into())
            .spawn(move || {
                // Encoding buffers come from the frame pool too: saving stays off the heap.
                in_frame_pool(|| {
                    let pre = Preprocessor::new(&meta);
                    let run = run_id();
                    for mut slot in work_rx {
                        match write_part(&mut slot, &run, &pre, roi, &mut budget) {
                            Ok(saved) => state.audit.lock().unwrap_or_else(|e| e.into_inner()).add(saved),
                            Err(e) => {
                                error!("audit of frame {}: {e:#}", slot.sequence);
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if free_tx.send(slot).is_err() {
                            break;
                        }
                    }
                })
            })
            .context("cannot start the audit writer")?;
        Ok(Auditor {
            free,
            work: Some(work),
            writer: Some(writer),
            dropped: 0,
            failed,
        })
    }

    /// Hands a rejected part to the writer; `fill` writes it into a free slot.
    pub(crate) fn offer(&mut self, fill: impl FnOnce(&mut AuditSlot)) {
        let (Ok(mut slot), Some(work)) = (self.free.try_recv(), &self.work) else {
            self.dropped += 1;
            return;
        };
        fill(&mut slot);
        if work.try_send(slot).is_err() {
            self.dropped += 1;
        }
    }

    /// Lets the writer finish what it holds; returns how many offered parts were not saved.
    pub fn finish(mut self) -> u64 {
        self.work = None;
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                error!("the audit writer panicked");
            }
        }
        self.dropped + self.failed.load(Ordering::Relaxed)
    }
}

/// Names saved parts apart from those of earlier runs (sequence numbers restart at 0).
fn run_id() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}", since_epoch.as_secs())
}

/// A task name as a file-name part: letters, digits, `-` and `_` only.
fn file_label(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect()
}

fn write_part(
    slot: &mut AuditSlot,
    run: &str,
    pre: &Preprocessor,
    roi: Option<Roi>,
    budget: &mut DiskBudget,
) -> Result<AuditedPart> {
    let stem = format!("{run}-{:010}-{}", slot.sequence, file_label(&slot.label));
    let frame = format!("{stem}.jpg");
    let frame_path = budget.dir.join(&frame);
    if slot.jpeg.is_empty() {
        crate::fsutil::write_atomic(&frame_path, &encode_jpeg(&slot.frame)?)?;
    } else {
        crate::fsutil::write_atomic(&frame_path, &slot.jpeg)?;
    }
    budget.add(&frame_path)?;
    let mut heatmap = None;
    if !slot.relative_patches.is_empty() {
        if !slot.jpeg.is_empty() {
            decode_jpeg(&slot.jpeg, &mut slot.frame)?;
        }
        let name = format!("{stem}-heatmap.jpg");
        let heatmap_path = budget.dir.join(&name);
        let frame = slot.frame.dimensions();
        let geometry = match roi {
            Some(r) => pre.geometry(r.width, r.height)?.within((r.x, r.y), frame),
            None => pre.geometry(frame.0, frame.1)?,
        };
        let verdict = Verdict {
            product: slot.label.clone(),
            unknown: false,
            score: image_score(&slot.relative_patches) + slot.threshold,
            threshold: slot.threshold,
            rejected: true,
        };
        let map = FrameMap::new(&slot.relative_patches, geometry, slot.threshold)?;
        crate::fsutil::write_atomic(&heatmap_path, &encode_jpeg(&render(&slot.frame, &map, &verdict)?)?)?;
        budget.add(&heatmap_path)?;
        heatmap = Some(name);
    }
    budget.enforce();
    let saved_unix_ms =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)).map_or(0, |d| d.as_millis() as u64);
    Ok(AuditedPart {
        part: slot.sequence,
        label: slot.label.clone(),
        saved_unix_ms,
        frame,
        heatmap,
    })
}

/// The saved files, oldest first, and their total size.
struct DiskBudget {
    dir: PathBuf,
    limit: u64,
    files: VecDeque<(PathBuf, u64)>,
    total: u64,
}

impl DiskBudget {
    /// Counts what earlier runs left in `dir` (names sort by frame sequence within a run).
    fn scan(dir: &Path, limit: u64) -> Result<DiskBudget> {
        let mut found: Vec<(std::time::SystemTime, PathBuf, u64)> = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let path = entry.path();
            let meta = entry
                .metadata()
                .and_then(|m| Ok((m.modified()?, m)))
                .with_context(|| format!("cannot stat {}", path.display()));
            let (modified, meta) = meta?;
            if meta.is_file() {
                found.push((modified, path, meta.len()));
            }
        }
        found.sort();
        let mut budget = DiskBudget {
            dir: dir.to_path_buf(),
            limit,
            files: VecDeque::new(),
            total: 0,
        };
        for (_, path, len) in found {
            budget.total += len;
            budget.files.push_back((path, len));
        }
        budget.enforce();
        Ok(budget)
    }

    fn add(&mut self, path: &Path) -> Result<()> {
        // A file written again (same name) is counted once.
        if let Some(at) = self.files.iter().position(|(p, _)| p == path) {
            let (_, len) = self.files.remove(at).expect("found");
            self.total -= len;
        }
        let len = std::fs::metadata(path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        self.total += len;
        self.files.push_back((path.to_path_buf(), len));
        Ok(())
    }

    /// Deletes the oldest files until the total fits the limit.
    fn enforce(&mut self) {
        while self.total > self.limit {
            let Some((path, len)) = self.files.pop_front() else {
                break;
            };
            if let Err(e) = std::fs::remove_file(&path) {
                warn!("cannot delete the old audit file {}: {e}", path.display());
            }
            self.total -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_deletes_the_oldest_files_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut budget = DiskBudget::scan(dir.path(), 2500).unwrap();
        for i in 0..4 {
            let path = dir.path().join(format!("{i}.bin"));
            std::fs::write(&path, vec![0u8; 1000]).unwrap();
            budget.add(&path).unwrap();
            budget.enforce();
        }
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["2.bin", "3.bin"]);
        assert_eq!(budget.total, 2000);
        // A restart counts what is already there.
        let rescanned = DiskBudget::scan(dir.path(), 1500).unwrap();
        assert_eq!(rescanned.total, 1000);
    }
}
