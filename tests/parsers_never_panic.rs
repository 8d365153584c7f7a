//! Seeded mutations of what a device parses from outside — bank files and update requests —
//! give an error or a value, never a panic (the fuzz targets in fuzz/ search further).

use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ucad::bank::{Bank, Capacity, Precision, Rows, Task};
use ucad::update::listener::{validate, UpdatePolicy};
use ucad::update::signing::sign;

const MUTATIONS: usize = 20_000;

fn small_bank() -> Bank {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut bank = Bank::new("fuzz", 8, 4);
    for (t, precision) in [Precision::F32, Precision::F16].into_iter().enumerate() {
        let rows: Vec<f32> = (0..8 * 6).map(|_| rng.random_range(-1.0..1.0)).collect();
        let (key, knowledge) = (Rows::new(8, rows.clone(), precision), Rows::new(8, rows, precision));
        let mut task = Task::uncalibrated(&format!("task {t}"), key, None, knowledge, 2);
        task.threshold = 0.5;
        bank.append(task).unwrap();
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

#[test]
fn mutated_update_requests_are_refused_without_a_panic() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let line = ucad::update::signing::Line::new("fuzz").unwrap();
    let policy = UpdatePolicy {
        trusted: vec![key.verifying_key()],
        line: line.clone(),
        backbone_sha256: "fuzz".into(),
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
