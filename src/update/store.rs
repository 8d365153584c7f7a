//! The bank on a device's disk: the current file, a last-known-good copy beside it, and the
//! version mark `*.version`: the highest bank version ever installed, which no update may go
//! back to or below, whatever happens to the bank files.
//!
//! Install order, so that a power cut at any instant leaves a whole bank to start from and the
//! mark never below a version that was ever current: the new bank is written and synced under a
//! temporary name; the current bank (when it loads) is copied the same way over `*.last-good`;
//! the mark is raised (written and synced the same way); the new file is renamed over the
//! current one; the folder is synced. A kill between the last two steps leaves the mark one
//! version ahead of the current bank: that version is then refused and must be signed again
//! with a higher one. Start-up loads the current bank and falls back to the last-known-good one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use log::warn;
use sha2::{Digest, Sha256};

use crate::backbone::BackboneSpec;
use crate::bank::format::{read_bank_file, version_in};
use crate::bank::{Bank, Capacity};
use crate::fsutil::write_atomic;

pub struct BankStore {
    pub current: PathBuf,
    pub last_good: PathBuf,
    pub version_mark: PathBuf,
    /// What makes a bank usable on this device.
    backbone: BackboneSpec,
    capacity: Capacity,
    /// The missing version mark was logged (once is enough: the poller asks every poll).
    told_no_mark: AtomicBool,
}

/// Held by every write to the bank files: an install and a demotion (which the loop decides on
/// its own) never interleave.
static WRITING: Mutex<()> = Mutex::new(());

/// Which file a device runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Current,
    LastGood,
    Pushed,
    Pulled,
}

impl BankStore {
    pub fn new(path: &Path, backbone: BackboneSpec, capacity: Capacity) -> BankStore {
        let beside = |suffix: &str| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        BankStore {
            current: path.to_path_buf(),
            last_good: beside(".last-good"),
            version_mark: beside(".version"),
            backbone,
            capacity,
            told_no_mark: AtomicBool::new(false),
        }
    }

    /// The bank to run with: the current one, or — when it is missing, damaged or refused —
    /// the last-known-good one, and the log says so.
    pub fn load(&self) -> Result<(Bank, Origin)> {
        let current = self.load_usable(&self.current);
        let current_error = match current {
            Ok(bank) => return Ok((bank, Origin::Current)),
            Err(e) => e,
        };
        match self.load_usable(&self.last_good) {
            Ok(bank) => {
                warn!(
                    "{current_error:#}: running on the last-known-good bank {} (version {})",
                    self.last_good.display(),
                    bank.version
                );
                Ok((bank, Origin::LastGood))
            }
            Err(e) => Err(current_error.context(format!("and no last-known-good bank: {e:#}"))),
        }
    }

    fn load_usable(&self, path: &Path) -> Result<Bank> {
        let bytes = read_bank_file(path)?;
        self.usable(&bytes, path)
    }

    /// The one test of a bank for this device: whole, for its backbone, within its capacity,
    /// with at least one task (validation refuses a bank without).
    fn usable(&self, bytes: &[u8], path: &Path) -> Result<Bank> {
        let origin = path.display().to_string();
        let bank = Bank::from_bytes(bytes, &origin)?;
        bank.check_backbone(&self.backbone, &origin)?;
        bank.check_capacity(self.capacity, &origin)?;
        Ok(bank)
    }

    /// Puts the last-known-good bank back in place of the current one, bank version `faulty`
    /// (which faulted in use), so that a restart does not run the faulty bank again, and returns
    /// it. Refused when the current file is another version: an update replaced it meanwhile.
    pub(crate) fn demote(&self, faulty: u64) -> Result<Bank> {
        let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
        let current = version_in(&read_bank_file(&self.current)?, &self.current.display().to_string())?;
        anyhow::ensure!(
            current == faulty,
            "{} is bank version {current}, not the faulty version {faulty}: an update replaced it, nothing is demoted",
            self.current.display()
        );
        let bytes = read_bank_file(&self.last_good)?;
        let bank = self.usable(&bytes, &self.last_good)?;
        write_atomic(&self.current, &bytes)?;
        Ok(bank)
    }

    /// The highest bank version ever installed here: the version mark, or — where there is
    /// none (a fresh device, or a store from before the mark) — the highest version among the
    /// bank files. A damaged or unreadable mark is an error, never a reset: updates stop until
    /// an operator restores or deletes it, rather than forget which versions they must refuse.
    pub fn highest_installed(&self) -> Result<u64> {
        let mark = &self.version_mark;
        match std::fs::read(mark) {
            Ok(bytes) => parse_mark(&bytes).with_context(|| {
                format!(
                    "{}: the version mark is damaged, so no update is installed (the versions to refuse \
                     are unknown); restore it, or delete it to take the highest version among the bank files",
                    mark.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let highest = [&self.current, &self.last_good]
                    .into_iter()
                    .filter_map(|path| Bank::load(path).ok())
                    .map(|bank| bank.version)
                    .max();
                let first_time = !self.told_no_mark.swap(true, Ordering::Relaxed);
                if let Some(version) = highest.filter(|_| first_time) {
                    warn!(
                        "{}: no version mark beside the bank files (a store from before the mark, or the \
                         mark was deleted): refusing updates up to version {version}, the highest among them",
                        mark.display()
                    );
                }
                Ok(highest.unwrap_or(0))
            }
            Err(e) => Err(e).with_context(|| format!("cannot read the version mark {}", mark.display())),
        }
    }

    /// Installs a bank file's bytes (already verified) of bank `version` as the current bank,
    /// raising the version mark to it.
    pub fn install(&self, bytes: &[u8], version: u64) -> Result<()> {
        let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
        let highest = self.highest_installed()?;
        let incoming = self.current.with_extension("incoming");
        write_atomic(&incoming, bytes)?;
        // Only a bank that loads may become the fallback; a damaged current file is replaced
        // without touching the last good one.
        if let Ok(current) = read_bank_file(&self.current) {
            if self.usable(&current, &self.current).is_ok() {
                write_atomic(&self.last_good, &current)?;
            }
        }
        if version > highest {
            write_atomic(&self.version_mark, mark_line(version).as_bytes())?;
        }
        std::fs::rename(&incoming, &self.current)
            .with_context(|| format!("cannot move {} to {}", incoming.display(), self.current.display()))?;
        crate::fsutil::sync_parent(&self.current)
    }
}

const MARK_TAG: &str = "ucad-bank-version";

/// The version mark's one line: the version and a check of it, so that damage is seen.
fn mark_line(version: u64) -> String {
    let text = format!("{MARK_TAG} {version}");
    let check = hex::encode(&Sha256::digest(text.as_bytes())[..8]);
    format!("{text} {check}\n")
}

fn parse_mark(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let version = text.strip_prefix(MARK_TAG)?.split(' ').nth(1)?.parse().ok()?;
    // Only the exact line this ucad writes: no sign, spaces or other check.
    (mark_line(version) == text).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::colour::COLOUR_DIMS;
    use crate::bank::colour::ColourStats;
    use crate::bank::{Rows, Task};

    fn spec(sha256: &str) -> BackboneSpec {
        BackboneSpec {
            sha256: sha256.repeat(32),
            feature_dim: 2,
            patches: 4,
            prompt_blocks: 1,
            prompt_len: 1,
            embed_dim: 2,
            arithmetic: Some(crate::backbone::Arithmetic::F32),
        }
    }

    fn bank(version: u64) -> Bank {
        let mut bank = Bank::new(&"ab".repeat(32), 2, 4);
        bank.version = version;
        let rows = || Rows::new(2, vec![0.0, 1.0], crate::bank::Precision::F32);
        let mut task = Task::uncalibrated("t", rows(), None, rows(), 1);
        (task.threshold, task.normal.count, task.routing.count) = (1.0, 1, 1);
        (task.routing.unknown_above, task.routing.patch_limit) = (15.0, 1.0);
        task.routing.image.std = 1.0;
        task.routing.colour = ColourStats::fit(&[[100.0; COLOUR_DIMS]]);
        bank.tasks.push(task);
        bank
    }

    const ROOM: Capacity = Capacity {
        tasks: 4,
        bytes_per_task: 1024,
    };

    #[test]
    fn the_last_good_bank_takes_over_when_the_current_one_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = BankStore::new(&dir.path().join("bank.ucad"), spec("ab"), ROOM);
        assert!(store.load().is_err(), "nothing installed yet");
        store.install(&bank(1).to_bytes(), 1).unwrap();
        store.install(&bank(2).to_bytes(), 2).unwrap();
        let (loaded, origin) = store.load().unwrap();
        assert_eq!((loaded.version, origin), (2, Origin::Current));
        std::fs::write(&store.current, b"UCADBANK garbage").unwrap();
        let (loaded, origin) = store.load().unwrap();
        assert_eq!((loaded.version, origin), (1, Origin::LastGood));
        // Installing over a damaged current bank keeps the last good one.
        store.install(&bank(3).to_bytes(), 3).unwrap();
        assert_eq!(Bank::load(&store.last_good).unwrap().version, 1);
        assert_eq!(store.load().unwrap().0.version, 3);
        let other = BankStore::new(&store.current, spec("cd"), ROOM);
        let err = format!("{:#}", other.load().unwrap_err());
        assert!(err.contains("backbone") && err.contains("last-known-good"), "{err}");
    }

    #[test]
    fn the_version_mark_outlives_the_bank_files_and_is_never_reset_by_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = BankStore::new(&dir.path().join("bank.ucad"), spec("ab"), ROOM);
        assert_eq!(store.highest_installed().unwrap(), 0, "a fresh device");
        store.install(&bank(5).to_bytes(), 5).unwrap();
        store.install(&bank(7).to_bytes(), 7).unwrap();
        std::fs::write(&store.current, b"UCADBANK garbage").unwrap();
        assert_eq!(store.load().unwrap().0.version, 5, "running on the last good bank");
        assert_eq!(store.highest_installed().unwrap(), 7);
        std::fs::remove_file(&store.current).unwrap();
        std::fs::remove_file(&store.last_good).unwrap();
        assert_eq!(store.highest_installed().unwrap(), 7, "both bank files gone");

        // Without a mark (a store from before it), the bank files say how far versions went.
        store.install(&bank(8).to_bytes(), 8).unwrap();
        store.install(&bank(9).to_bytes(), 9).unwrap();
        std::fs::remove_file(&store.version_mark).unwrap();
        assert_eq!(store.highest_installed().unwrap(), 9);
        std::fs::write(&store.current, b"damaged").unwrap();
        assert_eq!(store.highest_installed().unwrap(), 8);

        // A damaged mark stops installs instead of forgetting.
        std::fs::write(&store.version_mark, mark_line(9)).unwrap();
        assert_eq!(store.highest_installed().unwrap(), 9);
        for damaged in [
            mark_line(9).replace('9', "1"),
            mark_line(9).replace(' ', " +"),
            String::new(),
        ] {
            std::fs::write(&store.version_mark, damaged).unwrap();
            let err = format!("{:#}", store.install(&bank(10).to_bytes(), 10).unwrap_err());
            assert!(err.contains("bank.ucad.version") && err.contains("damaged"), "{err}");
        }
        assert_eq!(store.load().unwrap().0.version, 8, "nothing was installed");
    }

    #[test]
    fn a_demoted_bank_gives_way_to_the_last_good_one_on_disk_too_unless_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = BankStore::new(&dir.path().join("bank.ucad"), spec("ab"), ROOM);
        assert!(store.demote(1).is_err(), "nothing to go back to");
        store.install(&bank(1).to_bytes(), 1).unwrap();
        store.install(&bank(2).to_bytes(), 2).unwrap();
        store.install(&bank(3).to_bytes(), 3).unwrap();
        // Version 2 faulted, but version 3 replaced it meanwhile: it stays.
        let err = format!("{:#}", store.demote(2).unwrap_err());
        assert!(err.contains("is bank version 3, not the faulty version 2"), "{err}");
        assert_eq!(store.load().unwrap().0.version, 3);
        assert_eq!(store.demote(3).unwrap().version, 2);
        let (loaded, origin) = store.load().unwrap();
        assert_eq!((loaded.version, origin), (2, Origin::Current));
    }
}
