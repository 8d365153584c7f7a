//! Seeded mutations of what a device parses from outside — bank files and update requests —
//! give an error or a value, never a panic (the fuzz targets in fuzz/ search further).

mod common;

use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ucad::backbone::BackboneSpec;
use ucad::backbone::{Backbone, Preprocessor};
use ucad::bank::format::seal;
use ucad::bank::{Bank, BankError, Capacity, Precision, Rows, Task};
use ucad::data::synthetic::textured_image;
use ucad::detect::Detector;
use ucad::update::policy::{validate, UpdatePolicy};
use ucad::update::signing::sign;

const MUTATIONS: usize = 20_000;
/// Re-sealed mutations of a bank's body: each reaches the decoder and the validation.
const BODY_MUTATIONS: usize = 10_000;

fn small_spec() -> BackboneSpec {
    BackboneSpec {
        sha256: "f0".repeat(32),
        feature_dim: 8,
        patches: 4,
        prompt_blocks: 1,
        prompt_len: 1,
        embed_dim: 8,
        arithmetic: Some(ucad::backbone::Arithmetic::F32),
    }
}

fn small_bank() -> Bank {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let spec = small_spec();
    let mut bank = Bank::new(&spec.sha256, spec.feature_dim, spec.patches);
    for (t, precision) in [Precision::F32, Precision::F16].into_iter().enumerate() {
        let rows: Vec<f32> = (0..8 * 6).map(|_| rng.random_range(-1.0..1.0)).collect();
        let (key, knowledge) = (Rows::new(8, rows.clone(), precision), Rows::new(8, rows, precision));
        let task = Task::uncalibrated(&format!("task {t}"), key, None, knowledge, 2);
        bank.append(common::calibrated(task)).unwrap();
    }
    bank.version = 5;
    bank
}

/// Flips, truncations, splices, random length fields and appended bytes.
fn mutate(valid: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for _ in 0..rng.random_range(1..4) {
        let len = bytes.len().max(1);
        match rng.random_range(0..5) {
            0 => {
                let at = rng.random_range(0..len).min(bytes.len().saturating_sub(1));
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= 1 << rng.random_range(0..8);
                }
            }
            1 => bytes.truncate(rng.random_range(0..len)),
            2 => {
                let at = rng.random_range(0..len).min(bytes.len());
                let junk: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
                bytes.splice(at..at, junk);
            }
            3 => {
                let at = rng.random_range(0..len).min(bytes.len());
                let end = (at + 8).min(bytes.len());
                let field = rng.random::<u64>().to_le_bytes();
                bytes[at..end].copy_from_slice(&field[..end - at]);
            }
            _ => bytes.extend((0..rng.random_range(1..256)).map(|_| rng.random::<u8>())),
        }
    }
    bytes
}

#[test]
fn mutated_bank_files_are_refused_or_read_without_a_panic() {
    let valid = small_bank().to_bytes();
    assert!(Bank::from_bytes(&valid, "valid").is_ok());
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let refused = (0..MUTATIONS)
        .filter(|_| Bank::from_bytes(&mutate(&valid, &mut rng), "mutated").is_err())
        .count();
    assert!(refused > MUTATIONS * 9 / 10, "only {refused} refused");
}

/// Overwrites a few bytes with a special f32 (NaN, ±∞, huge, tiny) or a random u32: what turns
/// a stored number, count or length into one out of range.
fn mutate_values(valid: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    const SPECIAL: [f32; 8] = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e30,
        -1e20,
        f32::MAX,
        1e-45,
        -0.0,
    ];
    let mut bytes = valid.to_vec();
    for _ in 0..rng.random_range(1..3) {
        let value = match rng.random_range(0..3) {
            0 => rng.random::<u32>().to_le_bytes(),
            _ => SPECIAL[rng.random_range(0..SPECIAL.len())].to_le_bytes(),
        };
        let at = rng.random_range(0..bytes.len() - 4);
        bytes[at..at + 4].copy_from_slice(&value);
    }
    bytes
}

/// Every re-sealed mutation of a bank body is decoded and validated: refused with an error, or
/// loaded, and then a detector built from it judges frames on the tiny backbone to a finite
/// score. Counts are printed (`--nocapture`).
#[test]
fn re_sealed_mutations_of_a_bank_body_are_refused_or_judge_to_a_finite_score() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = Backbone::load(&common::tiny_backbone(dir.path())).unwrap();
    let spec = backbone.spec();
    let body = postcard::to_allocvec(&common::random_bank(&spec)).unwrap();
    assert!(Bank::from_bytes(&seal(&body), "valid").is_ok());
    let mut pre = Preprocessor::new(&backbone.meta);
    let frames: Vec<_> = (0..2)
        .map(|seed| pre.tensor(&textured_image(64, 64, seed)).unwrap())
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (mut decoded, mut invalid, mut loaded, mut judged) = (0, 0, 0, 0);
    for i in 0..BODY_MUTATIONS {
        let mutated = match i % 2 {
            0 => mutate(&body, &mut rng),
            _ => mutate_values(&body, &mut rng),
        };
        let bank = match Bank::from_bytes(&seal(&mutated), "mutated") {
            Ok(bank) => bank,
            Err(BankError::Corrupt { .. }) => continue,
            Err(BankError::Invalid { .. }) => {
                (decoded, invalid) = (decoded + 1, invalid + 1);
                continue;
            }
            Err(e) => panic!("a re-sealed body did not reach the decoder: {e}"),
        };
        decoded += 1;
        if bank.check_backbone(&spec, "mutated").is_err() {
            continue;
        }
        loaded += 1;
        let detector = Detector::new(&bank).expect("a bank that loads makes a detector");
        for frame in &frames {
            let judgement = detector
                .judge_image(&backbone, frame, None, &mut |_| {})
                .expect("a bank that loads judges");
            assert!(
                judgement.score.is_finite(),
                "score {} of a loaded bank",
                judgement.score
            );
            judged += 1;
        }
    }
    println!(
        "{BODY_MUTATIONS} re-sealed bank bodies: all reached postcard decoding, {decoded} decoded, \
         {invalid} refused by validation, {loaded} loaded for the backbone, {judged} frames judged"
    );
    assert!(invalid > BODY_MUTATIONS / 10, "validation refused only {invalid}");
    assert!(loaded > BODY_MUTATIONS / 10, "only {loaded} loaded");
}

#[test]
fn mutated_update_requests_are_refused_without_a_panic() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let line = ucad::update::signing::Line::new("fuzz").unwrap();
    let policy = UpdatePolicy {
        trusted: vec![key.verifying_key()],
        line: line.clone(),
        backbone: small_spec(),
        capacity: Capacity {
            tasks: 8,
            bytes_per_task: 1 << 20,
        },
        max_bytes: 1 << 20,
        request_deadline: std::time::Duration::from_secs(1),
    };
    let valid = sign(&small_bank().to_bytes(), &line, &key);
    assert!(validate(&valid, &policy, 4).is_ok());
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..MUTATIONS {
        let mutated = mutate(&valid, &mut rng);
        // The signature covers every byte: no change at all may pass (two flips of one bit
        // give the valid request back).
        let accepted = validate(&mutated, &policy, 4).is_ok();
        assert!(!accepted || mutated == valid, "a mutated update was accepted");
    }
    let random: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    for len in 0..random.len() {
        assert!(validate(&random[..len], &policy, 0).is_err());
    }
}
