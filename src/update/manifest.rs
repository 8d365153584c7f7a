//! Signed manifests for pull updates: `ucad publish` writes one beside a bank file, in a folder any
//! static web server or object store can serve; devices fetch it, verify it and only then fetch
//! the bank it names.
//!
//! A manifest is text: a header line `ucad-manifest 1 KEY_ID SIGNATURE` (hex; the key id as in
//! signed envelopes), then a JSON object (`Manifest`). The signature covers a context string and
//! every byte after the header line, so that nothing in the JSON can be changed, and a manifest
//! can be replayed for nothing else than what it says: its line, its version, its expiry.

use anyhow::{Context, Result};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::signing::{key_id, Line};

const TAG: &str = "ucad-manifest";
const FORMAT: u32 = 1;
const CONTEXT: &[u8] = b"ucad bank manifest v1\0";
/// A manifest is a few hundred bytes; a device reads no more than this of one.
pub(crate) const MAX_MANIFEST_BYTES: usize = 16 << 10;
/// The longest bank file name a manifest may give.
const MAX_NAME_LEN: usize = 128;
/// The longest a manifest may be valid: devices refuse a longer promise, whoever signed it.
pub const MAX_VALID_S: u64 = 3650 * 86_400;
/// The shortest: less cannot reach a device before it expires.
pub const MIN_VALID_S: u64 = 60;

/// What a publisher promises about one bank, for one line, until a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub line: Line,
    /// The bank's own version (the bank file says it too; both must agree).
    pub version: u64,
    /// The bank file's name, in the folder of the manifest.
    pub bank: String,
    /// The bank file's length in bytes: a device reads no more.
    pub size: u64,
    /// The bank file's sha256, lower-case hex.
    pub sha256: String,
    /// When it was published and after when devices refuse it, in seconds since 1970 (UTC).
    pub issued_unix: u64,
    pub expires_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest has {0} bytes, at most {MAX_MANIFEST_BYTES} are read")]
    TooLong(usize),
    #[error("not a ucad manifest: {0}")]
    Malformed(String),
    #[error("manifest format {0} is not read by this ucad (it reads {FORMAT})")]
    Format(String),
    #[error("the manifest is signed by key {0}, which this device does not trust")]
    UnknownKey(String),
    #[error("the manifest's signature does not verify (damaged or forged)")]
    BadSignature,
    #[error("the manifest's {0}")]
    BadField(String),
}

impl Manifest {
    /// The signed text of this manifest.
    pub fn sign(&self, key: &SigningKey) -> Result<String> {
        self.check().map_err(anyhow::Error::msg)?;
        let body = serde_json::to_string_pretty(self).context("cannot write the manifest")?;
        Ok(signed_text(&format!("{body}\n"), key))
    }

    /// Parses a manifest and checks its signature against the trusted keys; never panics,
    /// whatever the bytes. Line, version and expiry are the caller's to check.
    pub fn verified(bytes: &[u8], trusted: &[VerifyingKey]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLong(bytes.len()));
        }
        let malformed = |what: &str| ManifestError::Malformed(what.to_string());
        let split = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| malformed("no header line"))?;
        let (header, body) = (&bytes[..split], &bytes[split + 1..]);
        let header = std::str::from_utf8(header).map_err(|_| malformed("the header line is not text"))?;
        if header.ends_with('\r') {
            return Err(malformed(
                "its lines end in CR LF: it was changed on its way (a manifest is served byte for byte)",
            ));
        }
        let fields: Vec<&str> = header.split(' ').collect();
        let [tag, format, id, signature] = fields[..] else {
            return Err(malformed(
                "the header line is not `ucad-manifest FORMAT KEY_ID SIGNATURE`",
            ));
        };
        if tag != TAG {
            return Err(malformed("the header line does not start with `ucad-manifest`"));
        }
        if format != FORMAT.to_string() {
            return Err(ManifestError::Format(format.chars().take(16).collect()));
        }
        let id: [u8; 8] = hex_array(id).ok_or_else(|| malformed("the key id is not 16 hex digits"))?;
        let signature: [u8; 64] =
            hex_array(signature).ok_or_else(|| malformed("the signature is not 128 hex digits"))?;
        let key = trusted
            .iter()
            .find(|k| key_id(k) == id)
            .ok_or_else(|| ManifestError::UnknownKey(hex::encode(id)))?;
        key.verify_strict(&signed_message(body), &Signature::from_bytes(&signature))
            .map_err(|_| ManifestError::BadSignature)?;
        let manifest: Manifest =
            serde_json::from_slice(body).map_err(|e| ManifestError::BadField(format!("JSON does not read: {e}")))?;
        manifest.check().map_err(ManifestError::BadField)?;
        Ok(manifest)
    }

    /// What a manifest must say to be usable at all (signed or not).
    fn check(&self) -> Result<(), String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let name = &self.bank;
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.starts_with('.') || !name.chars().all(allowed) {
            return Err(format!(
                "bank file name {name:?}: 1 to {MAX_NAME_LEN} ASCII letters, digits, '.', '_' or '-', not \
                 starting with '.' (a name in the manifest's folder)"
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(format!("sha256 {:?} is not 64 lower-case hex digits", self.sha256));
        }
        if self.size == 0 {
            return Err("size is 0".into());
        }
        let valid = self.expires_unix.checked_sub(self.issued_unix);
        if !valid.is_some_and(|v| (MIN_VALID_S..=MAX_VALID_S).contains(&v)) {
            return Err(format!(
                "validity, from its issue ({}) to its expiry ({}), must be {MIN_VALID_S} s to 3650 days",
                self.issued_unix, self.expires_unix
            ));
        }
        Ok(())
    }
}

/// The header line for `body`, then `body`.
fn signed_text(body: &str, key: &SigningKey) -> String {
    let signature = key.sign(&signed_message(body.as_bytes()));
    format!(
        "{TAG} {FORMAT} {} {}\n{body}",
        hex::encode(key_id(&key.verifying_key())),
        hex::encode(signature.to_bytes())
    )
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    [CONTEXT, body].concat()
}

fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    // Lower case only, so that one manifest has one spelling.
    if text.chars().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn manifest() -> Manifest {
        Manifest {
            line: Line::new("hall-2").unwrap(),
            version: 7,
            bank: "bank-v7.ucad".into(),
            size: 1234,
            sha256: "ab".repeat(32),
            issued_unix: 1_000,
            expires_unix: 2_000,
        }
    }

    #[test]
    fn a_signed_manifest_verifies_only_unchanged_and_with_a_trusted_key() {
        let text = manifest().sign(&key(1)).unwrap();
        let trusted = [key(2).verifying_key(), key(1).verifying_key()];
        assert_eq!(Manifest::verified(text.as_bytes(), &trusted).unwrap(), manifest());
        let err = Manifest::verified(text.as_bytes(), &trusted[..1]).unwrap_err();
        assert!(matches!(err, ManifestError::UnknownKey(_)), "{err}");
        // Any change to the JSON, however small, breaks the signature.
        let header_len = text.find('\n').unwrap() + 1;
        for at in [header_len, header_len + 20, text.len() - 3] {
            let mut bytes = text.clone().into_bytes();
            bytes[at] ^= 0x01;
            let err = Manifest::verified(&bytes, &trusted).unwrap_err();
            assert_eq!(err, ManifestError::BadSignature, "flip at {at}");
        }
        let moved = text.replace("\"version\": 7", "\"version\": 8");
        assert_eq!(
            Manifest::verified(moved.as_bytes(), &trusted).unwrap_err(),
            ManifestError::BadSignature
        );
    }

    #[test]
    fn malformed_manifests_are_refused_by_what_is_wrong() {
        let trusted = [key(1).verifying_key()];
        let text = manifest().sign(&key(1)).unwrap();
        let refused = |bytes: &[u8]| Manifest::verified(bytes, &trusted).unwrap_err().to_string();
        assert!(refused(b"").contains("no header line"));
        assert!(refused(b"<html>\n").contains("not `ucad-manifest FORMAT"));
        assert!(refused(text.replace('\n', "\r\n").as_bytes()).contains("CR LF"));
        assert!(refused(text.replacen("ucad-manifest 1", "ucad-manifest 2", 1).as_bytes()).contains("format 2"));
        assert!(refused(&vec![b'x'; MAX_MANIFEST_BYTES + 1]).contains("at most"));
        let upper = text.replacen(&text[16..32], &text[16..32].to_uppercase(), 1);
        assert!(refused(upper.as_bytes()).contains("16 hex digits"), "{upper}");
        // Signed, but saying something unusable.
        for (bad, says) in [
            (
                Manifest {
                    bank: "../bank".into(),
                    ..manifest()
                },
                "bank file name",
            ),
            (
                Manifest {
                    bank: ".hidden".into(),
                    ..manifest()
                },
                "bank file name",
            ),
            (
                Manifest {
                    sha256: "AB".repeat(32),
                    ..manifest()
                },
                "sha256",
            ),
            (Manifest { size: 0, ..manifest() }, "size is 0"),
            (
                Manifest {
                    expires_unix: 1_000,
                    ..manifest()
                },
                "expiry",
            ),
        ] {
            assert!(bad.sign(&key(1)).is_err(), "{says}: not signed");
            let forged = signed_text(&serde_json::to_string(&bad).unwrap(), &key(1));
            assert!(refused(forged.as_bytes()).contains(says), "{says}");
        }
        let unknown = signed_text(r#"{"line":"hall-2","version":7,"extra":1}"#, &key(1));
        assert!(refused(unknown.as_bytes()).contains("JSON does not read"));
    }
}
