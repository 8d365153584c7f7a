//! The bank on a device's disk: the current file and a last-known-good copy beside it.
//!
//! Install order, so that a power cut at any instant leaves a whole bank to start from: the new
//! bank is written and synced under a temporary name; the current bank (when it loads) is copied
//! the same way over `*.last-good`; the new file is renamed over the current one; the folder is
//! synced. Start-up loads the current bank and falls back to the last-known-good one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use log::warn;

use crate::bank::{BackboneSpec, Bank, Capacity};
use crate::fsutil::write_atomic;

pub struct BankStore {
    pub current: PathBuf,
    pub last_good: PathBuf,
    /// What makes a bank usable on this device.
    backbone: BackboneSpec,
    capacity: Capacity,
}

/// Which file a device runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Current,
    LastGood,
    Pushed,
}

impl BankStore {
    pub fn new(path: &Path, backbone: BackboneSpec, capacity: Capacity) -> BankStore {
        let mut last_good = path.as_os_str().to_owned();
        last_good.push(".last-good");
        BankStore {
            current: path.to_path_buf(),
            last_good: PathBuf::from(last_good),
            backbone,
            capacity,
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
        let bytes = std::fs::read(path).with_context(|| format!("cannot read the bank {}", path.display()))?;
        self.usable(&bytes, path)
    }

    /// The one test of a bank for this device: whole, for its backbone, within its capacity,
    /// with at least one task.
    fn usable(&self, bytes: &[u8], path: &Path) -> Result<Bank> {
        let origin = path.display().to_string();
        let bank = Bank::from_bytes(bytes, &origin)?;
        bank.check_backbone(&self.backbone, &origin)?;
        bank.check_capacity(self.capacity, &origin)?;
        anyhow::ensure!(!bank.tasks.is_empty(), "{origin}: the bank has no tasks");
        Ok(bank)
    }

    /// Installs a bank file's bytes (already verified) as the current bank.
    pub fn install(&self, bytes: &[u8]) -> Result<()> {
        let incoming = self.current.with_extension("incoming");
        write_atomic(&incoming, bytes)?;
        // Only a bank that loads may become the fallback; a damaged current file is replaced
        // without touching the last good one.
        if let Ok(current) = std::fs::read(&self.current) {
            if self.usable(&current, &self.current).is_ok() {
                write_atomic(&self.last_good, &current)?;
            }
        }
        std::fs::rename(&incoming, &self.current)
            .with_context(|| format!("cannot move {} to {}", incoming.display(), self.current.display()))?;
        crate::fsutil::sync_parent(&self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::{Rows, Task};
    use crate::detect::colour::{ColourStats, COLOUR_DIMS};

    fn spec(sha256: &str) -> BackboneSpec {
        BackboneSpec {
            sha256: sha256.repeat(32),
            feature_dim: 2,
            patches: 4,
            prompt_blocks: 1,
            prompt_len: 1,
            embed_dim: 2,
        }
    }

    fn bank(version: u64) -> Bank {
        let mut bank = Bank::new(&"ab".repeat(32), 2, 4);
        bank.version = version;
        let rows = || Rows::new(2, vec![0.0, 1.0], crate::bank::Precision::F32);
        let mut task = Task::uncalibrated("t", rows(), None, rows(), 1);
        (task.threshold, task.normal.count, task.routing.count) = (1.0, 1, 1);
        (task.routing.unknown_above, task.routing.patch_limit) = (15.0, 1.0);
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
        store.install(&bank(1).to_bytes()).unwrap();
        store.install(&bank(2).to_bytes()).unwrap();
        let (loaded, origin) = store.load().unwrap();
        assert_eq!((loaded.version, origin), (2, Origin::Current));
        std::fs::write(&store.current, b"UCADBANK garbage").unwrap();
        let (loaded, origin) = store.load().unwrap();
        assert_eq!((loaded.version, origin), (1, Origin::LastGood));
        // Installing over a damaged current bank keeps the last good one.
        store.install(&bank(3).to_bytes()).unwrap();
        assert_eq!(Bank::load(&store.last_good).unwrap().version, 1);
        assert_eq!(store.load().unwrap().0.version, 3);
        let other = BankStore::new(&store.current, spec("cd"), ROOM);
        let err = format!("{:#}", other.load().unwrap_err());
        assert!(err.contains("backbone") && err.contains("last-known-good"), "{err}");
    }
}
