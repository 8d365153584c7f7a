//! Signed bank updates: ed25519 key files and the update envelope.
//!
//! Envelope (format 2): `UCADSIGN`, format (u32 LE), the signing key's id (the first 8 bytes of
//! the sha256 of its public key), the signature (64 bytes), the length of the line name (one
//! byte), the line name, then the bank file as is. The signature covers a context string, the
//! line name and the bank bytes, so that it can be replayed neither for anything else nor to
//! another line. Format 1 (no line) is refused.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"UCADSIGN";
const FORMAT: u32 = 2;
const CONTEXT: &[u8] = b"ucad bank update v2\0";
/// Bytes before the line name in an envelope.
pub(crate) const HEADER_LEN: usize = 8 + 4 + 8 + 64 + 1;
/// The longest line name.
pub(crate) const MAX_LINE_LEN: usize = 64;

const SECRET_TAG: &str = "ucad-ed25519-secret";
const PUBLIC_TAG: &str = "ucad-ed25519-public";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a signed ucad update ({0} bytes, bad magic)")]
    NotAnUpdate(usize),
    #[error(
        "update envelope format {0} is not read by this ucad (it reads {FORMAT}, whose signature names \
         the line): sign the bank again with `ucad sign --line` or `ucad push --line`"
    )]
    Format(u32),
    #[error("the update is cut short in its header ({0} bytes)")]
    Truncated(usize),
    #[error("the update's {0}")]
    BadLine(String),
    #[error("the update is signed by key {0}, which this device does not trust")]
    UnknownKey(String),
    #[error("the update's signature does not verify (damaged or forged)")]
    BadSignature,
}

/// The name of the production line (or device group) an update is signed for: 1 to 64 ASCII
/// letters, digits, `.`, `_` or `-`, so that two names that look alike are alike.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Line(String);

impl Line {
    pub fn new(name: &str) -> Result<Line, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty() || name.len() > MAX_LINE_LEN || !name.chars().all(allowed) {
            return Err(format!(
                "line name {name:?}: 1 to {MAX_LINE_LEN} ASCII letters, digits, '.', '_' or '-'"
            ));
        }
        Ok(Line(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Line {
    type Error = String;
    fn try_from(name: String) -> Result<Line, String> {
        Line::new(&name)
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed envelope: who signed it, for which line, and the bank it carries (not yet verified).
#[derive(Debug)]
pub struct SignedUpdate<'a> {
    pub key_id: [u8; 8],
    signature: Signature,
    pub line: Line,
    pub bank: &'a [u8],
}

impl<'a> SignedUpdate<'a> {
    /// Splits an envelope; never panics, whatever the bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<SignedUpdate<'a>, EnvelopeError> {
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(EnvelopeError::NotAnUpdate(bytes.len()));
        }
        let format = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if format != FORMAT {
            return Err(EnvelopeError::Format(format));
        }
        let truncated = || EnvelopeError::Truncated(bytes.len());
        let line_end = HEADER_LEN + *bytes.get(HEADER_LEN - 1).ok_or_else(truncated)? as usize;
        let name = bytes.get(HEADER_LEN..line_end).ok_or_else(truncated)?;
        let line = Line::new(&String::from_utf8_lossy(name)).map_err(EnvelopeError::BadLine)?;
        let signature: [u8; 64] = bytes[20..84].try_into().expect("64 bytes");
        Ok(SignedUpdate {
            key_id: bytes[12..20].try_into().expect("8 bytes"),
            signature: Signature::from_bytes(&signature),
            line,
            bank: &bytes[line_end..],
        })
    }

    /// Checks the signature against the trusted key with the envelope's key id.
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<(), EnvelopeError> {
        let key = trusted
            .iter()
            .find(|k| key_id(k) == self.key_id)
            .ok_or_else(|| EnvelopeError::UnknownKey(hex::encode(self.key_id)))?;
        key.verify_strict(&signed_message(&self.line, self.bank), &self.signature)
            .map_err(|_| EnvelopeError::BadSignature)
    }
}

fn signed_message(line: &Line, bank: &[u8]) -> Vec<u8> {
    [CONTEXT, &[line.0.len() as u8], line.0.as_bytes(), bank].concat()
}

pub(crate) fn key_id(key: &VerifyingKey) -> [u8; 8] {
    Sha256::digest(key.as_bytes())[..8].try_into().expect("8 bytes")
}

/// The envelope for a bank file's bytes, for the devices of `line`.
pub fn sign(bank: &[u8], line: &Line, key: &SigningKey) -> Vec<u8> {
    let signature = key.sign(&signed_message(line, bank));
    let mut out = Vec::with_capacity(HEADER_LEN + line.0.len() + bank.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&key_id(&key.verifying_key()));
    out.extend_from_slice(&signature.to_bytes());
    out.push(line.0.len() as u8);
    out.extend_from_slice(line.0.as_bytes());
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
    // A key file is one line of hex.
    let text = crate::fsutil::read_text(path, 4096).with_context(|| format!("cannot read key {}", path.display()))?;
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

    fn line(name: &str) -> Line {
        Line::new(name).unwrap()
    }

    #[test]
    fn a_signed_bank_verifies_only_unchanged_and_with_a_trusted_key() {
        let bank = b"UCADBANK and some body".to_vec();
        let envelope = sign(&bank, &line("hall-2.line_3"), &key(1));
        let trusted = [key(2).verifying_key(), key(1).verifying_key()];
        let parsed = SignedUpdate::parse(&envelope).unwrap();
        assert_eq!((parsed.bank, parsed.line.as_str()), (&bank[..], "hall-2.line_3"));
        parsed.verify(&trusted).unwrap();
        assert!(matches!(
            parsed.verify(&trusted[..1]),
            Err(EnvelopeError::UnknownKey(_))
        ));
        for at in [0, 12, 30, HEADER_LEN - 1, HEADER_LEN + 3, HEADER_LEN + 16] {
            let mut flipped = envelope.clone();
            flipped[at] ^= 0x10;
            let refused = SignedUpdate::parse(&flipped).and_then(|u| u.verify(&trusted));
            assert!(refused.is_err(), "flip at {at} accepted");
        }
        for cut in [11, 40, HEADER_LEN - 1, HEADER_LEN + 5] {
            assert_eq!(
                SignedUpdate::parse(&envelope[..cut]).unwrap_err(),
                if cut < 12 {
                    EnvelopeError::NotAnUpdate(cut)
                } else {
                    EnvelopeError::Truncated(cut)
                }
            );
        }
    }

    #[test]
    fn the_line_is_signed_and_the_old_format_is_refused_by_name() {
        let bank = b"UCADBANK and some body".to_vec();
        let trusted = [key(1).verifying_key()];
        // The same bank and signature presented for another line of the same length.
        let mut moved = sign(&bank, &line("line-a"), &key(1));
        moved[HEADER_LEN + 5] = b'b';
        let parsed = SignedUpdate::parse(&moved).unwrap();
        assert_eq!(parsed.line.as_str(), "line-b");
        assert_eq!(parsed.verify(&trusted), Err(EnvelopeError::BadSignature));

        let mut old = sign(&bank, &line("line-a"), &key(1));
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        let err = SignedUpdate::parse(&old).unwrap_err().to_string();
        assert!(err.contains("format 1") && err.contains("--line"), "{err}");

        let mut bad_name = sign(&bank, &line("line-a"), &key(1));
        bad_name[HEADER_LEN] = b' ';
        let err = SignedUpdate::parse(&bad_name).unwrap_err().to_string();
        assert!(err.contains("line name \" ine-a\""), "{err}");
        for name in ["", "a b", "línea", &"x".repeat(MAX_LINE_LEN + 1)] {
            assert!(Line::new(name).is_err(), "{name:?}");
        }
        assert!(Line::new(&"x".repeat(MAX_LINE_LEN)).is_ok());
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
