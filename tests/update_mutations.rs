//! Seeded mutations of an update that get past the checksum and the signature: the bank's
//! postcard body (or header) is changed, the bank file re-sealed with its checksum and the
//! update re-signed with the device's key, so that every mutation reaches the envelope parser,
//! the bank parser and the listener's checks — and then, when accepted, the detector it would be
//! installed as. A refusal or a bank, never a panic. (Mutations that do not re-seal are in
//! tests/parsers_never_panic.rs; the fuzz targets in fuzz/ search further.)

mod common;

use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use ucad::backbone::BackboneSpec;
use ucad::bank::{Bank, BankError, Capacity};
use ucad::detect::Detector;
use ucad::update::policy::{validate, UpdatePolicy};
use ucad::update::signing::{sign, Line, SignedUpdate};

const MUTATIONS: usize = 10_000;
const DIM: usize = 8;
/// Magic, format, body length: before the body in a bank file.
const BANK_HEADER: usize = 8 + 4 + 8;
const CHECKSUM: usize = 32;

/// The backbone the mutated banks claim: small, so that 10,000 of them take seconds.
fn spec() -> BackboneSpec {
    BackboneSpec {
        sha256: "f0".repeat(32),
        feature_dim: DIM,
        patches: 4,
        prompt_blocks: 1,
        prompt_len: 1,
        embed_dim: DIM,
        arithmetic: Some(ucad::backbone::Arithmetic::F32),
    }
}

/// A bank file around `body`, with `header` (magic and format) and a matching checksum.
fn seal(header: &[u8], body: &[u8]) -> Vec<u8> {
    [header, &(body.len() as u64).to_le_bytes(), body, &Sha256::digest(body)].concat()
}

/// Bytes that hit the parsers' corners when written over a body: special floats, length
/// prefixes (postcard varints) and enum tags.
fn special(rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => {
            let floats = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, f32::MAX, 1e-45, 1e30];
            floats[rng.random_range(0..floats.len())].to_le_bytes().to_vec()
        }
        1 => vec![0xff; rng.random_range(1..11)],
        2 => vec![0; rng.random_range(1..5)],
        _ => vec![rng.random_range(0..8)],
    }
}

/// One to three changes to a bank body.
fn mutate_body(body: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..body.len().max(1)).min(body.len());
        match rng.random_range(0..6) {
            0 => {
                if let Some(byte) = body.get_mut(at) {
                    *byte ^= 1 << rng.random_range(0..8);
                }
            }
            1 => {
                let bytes = special(rng);
                let end = (at + bytes.len()).min(body.len());
                body[at..end].copy_from_slice(&bytes[..end - at]);
            }
            2 => body.truncate(at),
            3 => {
                let junk = special(rng);
                body.splice(at..at, junk);
            }
            4 => {
                let end = (at + rng.random_range(1..64)).min(body.len());
                let copy = body[at..end].to_vec();
                body.splice(at..at, copy);
            }
            _ => {
                let end = (at + rng.random_range(1..16)).min(body.len());
                body.drain(at..end);
            }
        }
    }
}

/// What a device on `line` trusting `key` accepts: banks of `spec()` up to 8 tasks of 1 MiB.
fn policy(line: &Line, key: &SigningKey) -> UpdatePolicy {
    UpdatePolicy {
        trusted: vec![key.verifying_key()],
        line: line.clone(),
        backbone: spec(),
        capacity: Capacity {
            tasks: 8,
            bytes_per_task: 1 << 20,
        },
        max_bytes: 1 << 20,
        request_deadline: std::time::Duration::from_secs(1),
    }
}

#[test]
fn resealed_mutations_of_an_update_reach_every_check_without_a_panic() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let line = Line::new("line-a").unwrap();
    let other_line = Line::new("line-b").unwrap();
    let policy = policy(&line, &key);
    let mut bank = common::random_bank(&spec());
    bank.version = 5;
    let valid = bank.to_bytes();
    assert!(validate(&sign(&valid, &line, &key), &policy, 4).is_ok());
    let (header, body) = (&valid[..BANK_HEADER - 8], &valid[BANK_HEADER..valid.len() - CHECKSUM]);

    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let (mut reached_postcard, mut decoded, mut accepted, mut detectors) = (0, 0, 0, 0);
    for _ in 0..MUTATIONS {
        let mut header = header.to_vec();
        let mut body = body.to_vec();
        let mut for_line = &line;
        match rng.random_range(0..20) {
            0 => header[8..12].copy_from_slice(&rng.random_range(0..8u32).to_le_bytes()),
            1 => for_line = &other_line,
            _ => mutate_body(&mut body, &mut rng),
        }
        let bank_file = seal(&header, &body);
        let update = sign(&bank_file, for_line, &key);
        let parsed = SignedUpdate::parse(&update).expect("a well-formed envelope");
        parsed.verify(&policy.trusted).expect("a valid signature");

        let result = validate(&update, &policy, 4);
        if parsed.line == policy.line {
            match Bank::from_bytes(&bank_file, "mutated") {
                Ok(_) => (reached_postcard, decoded) = (reached_postcard + 1, decoded + 1),
                Err(BankError::Corrupt { .. }) => reached_postcard += 1,
                Err(_) => {}
            }
        } else {
            assert_eq!(result.as_ref().map_err(|r| r.status).err(), Some(403));
        }
        if let Ok((bank, _)) = result {
            accepted += 1;
            // What the listener does next with an accepted bank.
            detectors += usize::from(Detector::new(&bank).is_ok());
        }
    }
    eprintln!(
        "{MUTATIONS} re-sealed update mutations: {reached_postcard} reached postcard decoding, {decoded} decoded, \
         {accepted} accepted by the listener's checks ({detectors} built a detector)"
    );
    assert!(
        reached_postcard > MUTATIONS * 8 / 10,
        "only {reached_postcard} got past the seal"
    );
    assert!(
        accepted > 0,
        "no mutation was accepted: the mutations do not reach the checks after decoding"
    );
}

#[test]
fn a_pushed_bank_of_another_precision_is_refused_like_any_mismatched_bank() {
    use ucad::backbone::Arithmetic;
    let key = SigningKey::from_bytes(&[7; 32]);
    let line = Line::new("line-a").unwrap();
    let mut policy = policy(&line, &key);
    let mut bank = common::random_bank(&spec());
    bank.version = 5;
    bank.arithmetic = Arithmetic::F16;
    let update = sign(&bank.to_bytes(), &line, &key);
    let refusal = validate(&update, &policy, 4).unwrap_err();
    assert_eq!(refusal.status, 422);
    for part in ["pushed bank", "f16 features", "computes in f32"] {
        assert!(refusal.message.contains(part), "{part:?} missing: {}", refusal.message);
    }
    // A device configured to allow the mismatch takes it.
    policy.backbone = spec().allowing_precision_mismatch(true);
    assert_eq!(validate(&update, &policy, 4).unwrap().0.arithmetic, Arithmetic::F16);
}
