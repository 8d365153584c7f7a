//! The bank file: `UCADBANK` magic, format version, body length, a postcard body and the
//! sha256 of the body. Tasks are kept in learning order; appending one leaves the bytes of the
//! others untouched.

use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::contents::{Bank, BankError, Task};
use super::validate::{check_task, MAX_VERSION};
use crate::backbone::BackboneSpec;

const MAGIC: &[u8; 8] = b"UCADBANK";
/// 2: compact knowledge (projection, int8) and routing statistics; 3: the tasks' colour
/// statistics; 4: chroma quartiles in the colour statistics; 5: the arithmetic of the features;
/// 6: the image-level routing signal (descriptors of the fit images and their spread). Older
/// banks are refused with a re-fit error: what they lack needs the training images, and a task
/// routed on one signal next to tasks routed on two would not be compared fairly.
pub(crate) const FORMAT_VERSION: u32 = 6;
/// The oldest format read.
const OLDEST_READ: u32 = 6;
const HEADER_LEN: usize = 8 + 4 + 8;
const CHECKSUM_LEN: usize = 32;

impl Bank {
    /// Appends a task (replacing none) and bumps the version; the task must pass the check
    /// every load makes.
    pub fn append(&mut self, task: Task) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.tasks.iter().any(|t| t.name == task.name),
            "the bank already has a task named {}",
            task.name
        );
        check_task(&task, self.feature_dim as usize)
            .map_err(|p| anyhow::anyhow!("cannot add the task: {} {}", p.field, p.problem))?;
        self.version = self
            .version
            .checked_add(1)
            .filter(|v| *v <= MAX_VERSION)
            .context("the bank's version is at its highest: no newer version can be made")?;
        self.tasks.push(task);
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        seal(&postcard::to_allocvec(self).expect("bank serialises"))
    }

    /// Parses a bank; `origin` names it in errors. Never panics, whatever the bytes.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Bank, BankError> {
        let path = origin.to_string();
        let body = sealed_body(bytes, origin)?;
        let corrupt = |reason: String| BankError::Corrupt {
            path: path.clone(),
            reason,
        };
        let (bank, rest) = postcard::take_from_bytes::<Bank>(body).map_err(|e| corrupt(e.to_string()))?;
        if !rest.is_empty() {
            return Err(corrupt(format!("{} bytes follow the bank", rest.len())));
        }
        bank.validate(&path)?;
        Ok(bank)
    }

    pub fn load(path: &Path) -> Result<Bank, BankError> {
        Bank::from_bytes(&read_bank_file(path)?, &path.display().to_string())
    }

    /// Writes the bank, which must pass the check every load makes: nothing writes a bank that
    /// would be refused.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        self.validate(&path.display().to_string())?;
        crate::fsutil::write_atomic(path, &self.to_bytes())
    }
}

/// The version of a whole bank file without checking what the bank means (a bank that faults
/// in use may not pass every check of a load): the version is the body's first field.
pub(crate) fn version_in(bytes: &[u8], origin: &str) -> Result<u64, BankError> {
    let body = sealed_body(bytes, origin)?;
    let (version, _) = postcard::take_from_bytes::<u64>(body).map_err(|e| BankError::Corrupt {
        path: origin.to_string(),
        reason: e.to_string(),
    })?;
    Ok(version)
}

/// The postcard body of a bank file whose header, length and checksum are intact.
fn sealed_body<'a>(bytes: &'a [u8], origin: &str) -> Result<&'a [u8], BankError> {
    let path = origin.to_string();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(BankError::NotABank { path });
    }
    if bytes.len() < HEADER_LEN {
        return Err(BankError::Truncated {
            path,
            expected: HEADER_LEN as u64,
            got: bytes.len() as u64,
        });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version > FORMAT_VERSION {
        return Err(BankError::NewerFormat {
            path,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version < OLDEST_READ {
        return Err(BankError::OlderFormat { path, found: version });
    }
    let body_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let expected = (HEADER_LEN as u64)
        .saturating_add(body_len)
        .saturating_add(CHECKSUM_LEN as u64);
    if bytes.len() as u64 != expected {
        return Err(BankError::Truncated {
            path,
            expected,
            got: bytes.len() as u64,
        });
    }
    let body = &bytes[HEADER_LEN..HEADER_LEN + body_len as usize];
    if Sha256::digest(body).as_slice() != &bytes[HEADER_LEN + body_len as usize..] {
        return Err(BankError::Checksum { path });
    }
    Ok(body)
}

/// A bank file around a postcard `body`: header, body, checksum. What [`Bank::to_bytes`] writes;
/// also lets tests and fuzz targets reach the decoder and the validation with any body.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CHECKSUM_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&Sha256::digest(body));
    out
}

/// Loads a bank for a backbone, with both checks: what every command that scores does.
pub fn load_for_backbone(path: &Path, backbone: &BackboneSpec) -> Result<Bank, BankError> {
    let bank = Bank::load(path)?;
    bank.check_backbone(backbone, &path.display().to_string())?;
    Ok(bank)
}

/// The largest bank file read: far beyond any device's capacity, and a bound on what a FIFO or a
/// device file named as a bank can make us read.
const MAX_FILE_BYTES: u64 = 1 << 32;

/// A bank file's bytes: a regular file of at most [`MAX_FILE_BYTES`].
pub fn read_bank_file(path: &Path) -> Result<Vec<u8>, BankError> {
    let io = |source| BankError::Io {
        path: path.display().to_string(),
        source,
    };
    crate::fsutil::read_regular(path, MAX_FILE_BYTES).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_without_the_rest_of_the_bank() {
        for version in [0, 1, 300, MAX_VERSION] {
            let mut bank = Bank::new(&"ab".repeat(32), 2, 4);
            bank.version = version;
            let bytes = bank.to_bytes();
            assert_eq!(version_in(&bytes, "b").unwrap(), version);
            assert!(
                Bank::from_bytes(&bytes, "b").is_err(),
                "without tasks a load refuses it"
            );
            let mut damaged = bytes.clone();
            damaged[HEADER_LEN] ^= 1;
            assert!(matches!(version_in(&damaged, "b"), Err(BankError::Checksum { .. })));
        }
    }
}
