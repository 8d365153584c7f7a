//! Signed bank updates: ed25519 key files and the update envelope.
//!
//! Envelope: `UCADSIGN`, format (u32 LE), the signing key's id (the first 8 bytes of the
//! sha256 of its public key), the signature (64 bytes), then the bank file as is. The signature
//! covers a context string and the bank bytes, so that it cannot be replayed for anything else.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"UCADSIGN";
const FORMAT: u32 = 1;
const CONTEXT: &[u8] = b"ucad bank update v1\0";
/// Bytes before the bank in an envelope.
pub const HEADER_LEN: usize = 8 + 4 + 8 + 64;

const SECRET_TAG: &str = "ucad-ed25519-secret";
const PUBLIC_TAG: &str = "ucad-ed25519-public";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a signed ucad update ({0} bytes, bad magic)")]
    NotAnUpdate(usize),
    #[error("update envelope format {0} is not read by this ucad (reads {FORMAT})")]
    Format(u32),
    #[error("the update is signed by key {0}, which this device does not trust")]
    UnknownKey(String),
    #[error("the update's signature does not verify (damaged or forged)")]
    BadSignature,
}

/// A parsed envelope: who signed it, and the bank it carries (not yet verified).
#[derive(Debug)]
pub struct SignedUpdate<'a> {
    pub key_id: [u8; 8],
    signature: Signature,
    pub bank: &'a [u8],
}

impl<'a> SignedUpdate<'a> {
    /// Splits an envelope; never panics, whatever the bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<SignedUpdate<'a>, EnvelopeError> {
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(EnvelopeError::NotAnUpdate(bytes.len()));
        }
        let format = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if format != FORMAT {
            return Err(EnvelopeError::Format(format));
        }
        let signature: [u8; 64] = bytes[20..HEADER_LEN].try_into().expect("64 bytes");
        Ok(SignedUpdate {
            key_id: bytes[12..20].try_into().expect("8 bytes"),
            signature: Signature::from_bytes(&signature),
            bank: &bytes[HEADER_LEN..],
        })
    }

    /// Checks the signature against the trusted key with the envelope's key id.
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<(), EnvelopeError> {
        let key = trusted
            .iter()
            .find(|k| key_id(k) == self.key_id)
            .ok_or_else(|| EnvelopeError::UnknownKey(hex::encode(self.key_id)))?;
        key.verify_strict(&signed_message(self.bank), &self.signature)
            .map_err(|_| EnvelopeError::BadSignature)
    }
}

fn signed_message(bank: &[u8]) -> Vec<u8> {
    [CONTEXT, bank].concat()
}

pub fn key_id(key: &VerifyingKey) -> [u8; 8] {
    Sha256::digest(key.as_bytes())[..8].try_into().expect("8 bytes")
}

/// The envelope for a bank file's bytes.
pub fn sign(bank: &[u8], key: &SigningKey) -> Vec<u8> {
    let signature = key.sign(&signed_message(bank));
    let mut out = Vec::with_capacity(HEADER_LEN + bank.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&key_id(&key.verifying_key()));
    out.extend_from_slice(&signature.to_bytes());
    out.extend_from_slice(bank);
    out
}

/// A new key from the operating system's random source.
pub fn generate_key() -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no random numbers from the OS: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Where the public half of a secret key file goes.
pub fn public_key_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Writes `path` (the secret key, owner-only) and `path.pub`; refuses to overwrite a key.
pub fn write_key_pair(path: &Path, key: &SigningKey) -> Result<()> {
    let public = public_key_path(path);
    for p in [path, public.as_path()] {
        if p.exists() {
            bail!("{} exists: not overwriting a key", p.display());
        }
    }
    let secret = format!("{SECRET_TAG} {}\n", hex::encode(key.to_bytes()));
    write_private(path, secret.as_bytes())?;
    let public_line = format!("{PUBLIC_TAG} {}\n", hex::encode(key.verifying_key().as_bytes()));
    crate::fsutil::write_atomic(&public, public_line.as_bytes())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn read_key_line(path: &Path, tag: &str) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read key {}", path.display()))?;
    let hex_key = text
        .trim()
        .strip_prefix(tag)
        .map(str::trim)
        .with_context(|| format!("{}: not a {tag} key file", path.display()))?;
    let bytes = hex::decode(hex_key).with_context(|| format!("{}: the key is not hex", path.display()))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("{}: a key has 32 bytes, this one {}", path.display(), b.len()))
}

pub fn read_secret_key(path: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&read_key_line(path, SECRET_TAG)?))
}

pub fn read_public_key(path: &Path) -> Result<VerifyingKey> {
    VerifyingKey::from_bytes(&read_key_line(path, PUBLIC_TAG)?)
        .with_context(|| format!("{}: not a valid ed25519 public key", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signed_bank_verifies_only_unchanged_and_with_a_trusted_key() {
        let bank = b"UCADBANK and some body".to_vec();
        let envelope = sign(&bank, &key(1));
        let trusted = [key(2).verifying_key(), key(1).verifying_key()];
        let parsed = SignedUpdate::parse(&envelope).unwrap();
        assert_eq!(parsed.bank, bank);
        parsed.verify(&trusted).unwrap();
        assert!(matches!(
            parsed.verify(&trusted[..1]),
            Err(EnvelopeError::UnknownKey(_))
        ));
        for at in [0, 12, 30, HEADER_LEN + 3] {
            let mut flipped = envelope.clone();
            flipped[at] ^= 0x10;
            let refused = SignedUpdate::parse(&flipped).and_then(|u| u.verify(&trusted));
            assert!(refused.is_err(), "flip at {at} accepted");
        }
        assert_eq!(
            SignedUpdate::parse(&envelope[..HEADER_LEN - 1]).unwrap_err(),
            EnvelopeError::NotAnUpdate(HEADER_LEN - 1)
        );
    }

    #[test]
    fn key_files_round_trip_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("line");
        let key = generate_key().unwrap();
        write_key_pair(&path, &key).unwrap();
        assert_eq!(read_secret_key(&path).unwrap().to_bytes(), key.to_bytes());
        assert_eq!(read_public_key(&public_key_path(&path)).unwrap(), key.verifying_key());
        assert!(write_key_pair(&path, &key).is_err());
        let err = read_public_key(&path).unwrap_err().to_string();
        assert!(err.contains("not a ucad-ed25519-public key file"), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the secret key is private");
        }
    }
}
