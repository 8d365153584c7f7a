//! Damaged, foreign and oversized banks are refused with a clear error, never a panic.

mod common;

use ucad::backbone::BackboneSpec;
use ucad::bank::format::load_for_backbone;
use ucad::bank::BankError;
use ucad::bank::{Bank, Capacity, Precision, Rows, Task};

fn task(name: &str, rows: usize, precision: Precision) -> Task {
    let data: Vec<f32> = (0..rows * 4).map(|i| (i as f32 * 0.37).sin()).collect();
    common::calibrated(Task::uncalibrated(
        name,
        Rows::new(4, data.clone(), precision),
        None,
        Rows::new(4, data, precision),
        1,
    ))
}

fn spec(sha256: &str) -> BackboneSpec {
    BackboneSpec {
        sha256: sha256.repeat(32),
        feature_dim: 4,
        patches: 16,
        prompt_blocks: 1,
        prompt_len: 1,
        embed_dim: 4,
        arithmetic: Some(ucad::backbone::Arithmetic::F32),
    }
}

fn small_bank() -> Bank {
    let mut bank = Bank::new("ab".repeat(32).as_str(), 4, 16);
    bank.append(task("a", 3, Precision::F32)).unwrap();
    bank.append(task("b", 2, Precision::F16)).unwrap();
    bank
}

#[test]
fn a_bank_round_trips() {
    let bank = small_bank();
    assert_eq!(Bank::from_bytes(&bank.to_bytes(), "mem").unwrap(), bank);
}

#[test]
fn every_truncation_is_refused_naming_the_file() {
    let bytes = small_bank().to_bytes();
    for len in 0..bytes.len() {
        let err = Bank::from_bytes(&bytes[..len], "bank.ucad").expect_err("a truncated bank loads");
        assert!(err.to_string().starts_with("bank.ucad: "), "{err}");
        assert!(
            matches!(err, BankError::NotABank { .. } | BankError::Truncated { .. }),
            "len {len}: {err}"
        );
    }
}

#[test]
fn every_flipped_byte_is_refused() {
    let bytes = small_bank().to_bytes();
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x20;
        assert!(
            Bank::from_bytes(&damaged, "bank.ucad").is_err(),
            "flip at byte {at} loads"
        );
    }
}

#[test]
fn a_newer_format_asks_for_an_update() {
    let mut bytes = small_bank().to_bytes();
    bytes[8] = 99;
    let err = Bank::from_bytes(&bytes, "bank.ucad").unwrap_err();
    assert!(matches!(err, BankError::NewerFormat { found: 99, .. }), "{err}");
}

#[test]
fn older_formats_are_refused_with_a_re_fit_error() {
    for old in [1u32, 2, 3] {
        let mut bytes = small_bank().to_bytes();
        bytes[8..12].copy_from_slice(&old.to_le_bytes());
        let err = Bank::from_bytes(&bytes, "old.ucad").unwrap_err();
        assert!(
            matches!(err, BankError::OlderFormat { found, .. } if found == old),
            "{err}"
        );
        assert!(
            err.to_string().contains("old.ucad") && err.to_string().contains("re-fit"),
            "{err}"
        );
    }
}

#[test]
fn a_format_4_bank_still_loads_as_one_fitted_in_f32() {
    use ucad::backbone::Arithmetic;
    let bank = small_bank();
    // Format 4: today's fields but the arithmetic, in order.
    let body = postcard::to_allocvec(&(
        bank.version,
        &bank.backbone_sha256,
        bank.feature_dim,
        bank.patches,
        &bank.tasks,
    ))
    .unwrap();
    let mut bytes = ucad::bank::format::seal(&body);
    bytes[8..12].copy_from_slice(&4u32.to_le_bytes());
    let old = Bank::from_bytes(&bytes, "v4.ucad").unwrap();
    assert_eq!(old.arithmetic, Arithmetic::F32);
    assert_eq!(old, bank);
    // Saved again, it is a bank of today's format that says f32.
    let again = old.to_bytes();
    assert_eq!(&again[8..12], &ucad::bank::format::FORMAT_VERSION.to_le_bytes());
    assert_eq!(Bank::from_bytes(&again, "v5.ucad").unwrap(), bank);
}

#[test]
fn a_bank_from_another_backbone_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.ucad");
    small_bank().save(&path).unwrap();
    let err = load_for_backbone(&path, &spec("cd")).unwrap_err();
    assert!(matches!(err, BankError::WrongBackbone { .. }), "{err}");
    assert!(err.to_string().contains("bank.ucad"), "{err}");
    assert!(load_for_backbone(&path, &spec("ab")).is_ok());
}

#[test]
fn a_bank_over_capacity_is_refused() {
    let bank = small_bank();
    let tight = Capacity {
        tasks: 1,
        bytes_per_task: 1 << 20,
    };
    assert!(matches!(
        bank.check_capacity(tight, "b"),
        Err(BankError::OverCapacity { .. })
    ));
    let rows = Capacity {
        tasks: 8,
        bytes_per_task: 40,
    };
    assert!(matches!(
        bank.check_capacity(rows, "b"),
        Err(BankError::OverCapacity { .. })
    ));
    assert!(bank
        .check_capacity(
            Capacity {
                tasks: 2,
                // Task a: 3 f32 rows of 4 in key and knowledge.
                bytes_per_task: 96
            },
            "b"
        )
        .is_ok());
}

#[test]
fn appending_leaves_earlier_task_bytes_in_place() {
    let mut bank = small_bank();
    let before = bank.to_bytes();
    bank.append(task("c", 2, Precision::F32)).unwrap();
    let after = bank.to_bytes();
    let first = postcard::to_allocvec(&bank.tasks[0]).unwrap();
    let find = |hay: &[u8]| hay.windows(first.len()).position(|w| w == first.as_slice());
    assert!(find(&before).is_some() && find(&after).is_some());
    assert_eq!(bank.version, 3);
}
