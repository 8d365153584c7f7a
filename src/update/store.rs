//! The bank on a device's disk: the current file and a last-known-good copy beside it.
//!
//! Install order, so that a power cut at any instant leaves a whole bank to start from: the new
//! bank is written and synced under a temporary name; the current bank (when it loads) is copied
//! the same way over `*.last-good`; the new file is renamed over the current one; the folder is
//! synced. Start-up loads the current bank and falls back to the last-known-good one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use log::warn;

use crate::bank::{Bank, Capacity};
use crate::fsutil::write_atomic;

pub struct BankStore {
    pub current: PathBuf,
    pub last_good: PathBuf,
    /// What makes a bank usable on this device.
    backbone_sha256: String,
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
    pub fn new(path: &Path, backbone_sha256: &str, capacity: Capacity) -> BankStore {
        let mut last_good = path.as_os_str().to_owned();
        last_good.push(".last-good");
        BankStore {
            current: path.to_path_buf(),
            last_good: PathBuf::from(last_good),
            backbone_sha256: backbone_sha256.to_string(),
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
        bank.check_backbone(&self.backbone_sha256, &origin)?;
        bank.check_capacity(self.capacity, &origin)?;
        anyhow::ensure!(!bank.tasks.is_empty(), "{origin}: the bank has no tasks");
        Ok(bank)
    }

    /// Puts the last-known-good bank back in place of the current one (which faulted in use),
    /// so that a restart does not run the faulty bank again, and returns it.
    pub fn demote(&self) -> Result<Bank> {
        let bytes = std::fs::read(&self.last_good)
            .with_context(|| format!("cannot read the bank {}", self.last_good.display()))?;
        let bank = self.usable(&bytes, &self.last_good)?;
        write_atomic(&self.current, &bytes)?;
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

    fn bank(version: u64) -> Bank {
        let mut bank = Bank::new("sha", 2, 4);
        bank.version = version;
        let rows = || Rows::new(2, vec![0.0, 1.0], crate::bank::Precision::F32);
        bank.tasks.push(Task::uncalibrated("t", rows(), None, rows(), 1));
        bank
    }

    const ROOM: Capacity = Capacity {
        tasks: 4,
        bytes_per_task: 1024,
    };

    #[test]
    fn the_last_good_bank_takes_over_when_the_current_one_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = BankStore::new(&dir.path().join("bank.ucad"), "sha", ROOM);
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
        let other = BankStore::new(&store.current, "other", ROOM);
        let err = format!("{:#}", other.load().unwrap_err());
        assert!(err.contains("backbone") && err.contains("last-known-good"), "{err}");
    }

    #[test]
    fn a_demoted_bank_gives_way_to_the_last_good_one_on_disk_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = BankStore::new(&dir.path().join("bank.ucad"), "sha", ROOM);
        assert!(store.demote().is_err(), "nothing to go back to");
        store.install(&bank(1).to_bytes()).unwrap();
        store.install(&bank(2).to_bytes()).unwrap();
        assert_eq!(store.demote().unwrap().version, 1);
        let (loaded, origin) = store.load().unwrap();
        assert_eq!((loaded.version, origin), (1, Origin::Current));
    }
}
