//! What a pushed bank must satisfy before a device installs it: a trusted signature for this
//! device's line, an intact bank file for this backbone within the device's capacity, and a
//! version newer than every bank installed before.

use std::time::Duration;

use ed25519_dalek::VerifyingKey;

use super::http::{refuse, Refusal};
use super::signing::{Line, SignedUpdate};
use crate::backbone::BackboneSpec;
use crate::bank::{Bank, BankError, Capacity};

/// What an update must satisfy on this device, and how long a request may take.
pub struct UpdatePolicy {
    pub trusted: Vec<VerifyingKey>,
    /// The line (or device group) this device is on: updates signed for another are refused.
    pub line: Line,
    pub backbone: BackboneSpec,
    pub capacity: Capacity,
    pub max_bytes: usize,
    /// The whole request, head and body, must arrive within this (`http::DEADLINE` on a device).
    pub request_deadline: Duration,
}

/// Everything short of installing (what the fuzz target drives): envelope, signature, line,
/// bank file, backbone, capacity, anti-rollback (the bank must be newer than
/// `highest_installed`, 0 on a device that never had one). Returns the bank and its file's
/// bytes. Never panics, whatever the bytes.
pub fn validate<'a>(
    body: &'a [u8],
    policy: &UpdatePolicy,
    highest_installed: u64,
) -> Result<(Bank, &'a [u8]), Refusal> {
    if body.len() > policy.max_bytes {
        return Err(refuse(
            413,
            format!("{} bytes, at most {} accepted", body.len(), policy.max_bytes),
        ));
    }
    let update = SignedUpdate::parse(body).map_err(|e| refuse(400, e))?;
    update.verify(&policy.trusted).map_err(|e| refuse(403, e))?;
    if update.line != policy.line {
        return Err(refuse(
            403,
            format!(
                "the update is signed for line {}, this device is on line {}",
                update.line, policy.line
            ),
        ));
    }
    let bank = validate_bank(update.bank, policy, highest_installed, "pushed bank")?;
    Ok((bank, update.bank))
}

/// The bank file's part of the checks, for a pushed bank and a pulled one alike (`origin` names
/// it in refusals): intact, for this backbone, within capacity, not empty, newer than
/// `highest_installed`.
pub(crate) fn validate_bank(
    bytes: &[u8],
    policy: &UpdatePolicy,
    highest_installed: u64,
    origin: &str,
) -> Result<Bank, Refusal> {
    let bank = Bank::from_bytes(bytes, origin).map_err(|e| match e {
        BankError::NewerFormat { .. } | BankError::OlderFormat { .. } | BankError::Invalid { .. } => refuse(422, e),
        _ => refuse(400, e),
    })?;
    bank.check_backbone(&policy.backbone, origin)
        .and_then(|()| bank.check_capacity(policy.capacity, origin))
        .map_err(|e| refuse(422, e))?;
    if bank.tasks.is_empty() {
        return Err(refuse(422, format!("the {origin} has no tasks")));
    }
    if bank.version <= highest_installed {
        return Err(refuse(
            409,
            format!(
                "bank version {} is not newer than version {highest_installed}, the highest installed on this \
                 device: no rollback",
                bank.version
            ),
        ));
    }
    Ok(bank)
}
