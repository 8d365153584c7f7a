//! The one way a bank reaches the loop, pushed or pulled: under one lock, the version check
//! against the highest ever installed, the bank's validation, the atomic install on disk, then the
//! swap the loop picks up between two frames.

use std::sync::{Arc, Mutex};

use log::info;
use serde_json::json;

use super::http::{refuse, Refusal};
use super::policy::UpdatePolicy;
use super::state::{DeviceState, Installed};
use super::store::{BankStore, Origin};
use crate::bank::Bank;

pub struct Installer {
    pub(crate) policy: UpdatePolicy,
    /// Held for a whole install: one version check and install at a time.
    store: Mutex<BankStore>,
    pub(crate) state: Arc<DeviceState>,
}

impl Installer {
    pub fn new(policy: UpdatePolicy, store: BankStore, state: Arc<DeviceState>) -> Installer {
        Installer {
            policy,
            store: Mutex::new(store),
            state,
        }
    }

    /// The highest bank version this device ever installed or runs (0 on a fresh one).
    pub(crate) fn highest_installed(&self) -> Result<u64, Refusal> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        self.highest(&store)
    }

    fn highest(&self, store: &BankStore) -> Result<u64, Refusal> {
        let running = self.state.installed.load().as_ref().map_or(0, |i| i.version);
        let marked = store.highest_installed().map_err(|e| refuse(500, format!("{e:#}")))?;
        Ok(marked.max(running))
    }

    /// Installs the bank `validate` accepts given the highest version installed so far, and
    /// returns what the device now runs.
    pub(crate) fn install<'a>(
        &self,
        origin: Origin,
        validate: impl FnOnce(u64) -> Result<(Bank, &'a [u8]), Refusal>,
    ) -> Result<serde_json::Value, Refusal> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let (bank, bank_bytes) = validate(self.highest(&store)?)?;
        let installed = Installed::new(&bank, origin).map_err(|e| refuse(422, format!("{e:#}")))?;
        store
            .install(bank_bytes, bank.version)
            .map_err(|e| refuse(500, format!("cannot install: {e:#}")))?;
        let summary = bank_summary(&bank);
        self.state.installed.store(Some(Arc::new(installed)));
        info!("bank version {} installed ({origin:?}): {summary}", bank.version);
        Ok(summary)
    }
}

fn bank_summary(bank: &Bank) -> serde_json::Value {
    json!({
        "version": bank.version,
        "arithmetic": bank.arithmetic,
        "tasks": bank.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
    })
}
