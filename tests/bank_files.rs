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
    // Format 5 banks lack the image-level routing signal, which needs the training images.
    for old in 1u32..=5 {
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
fn the_image_routing_statistics_round_trip_and_a_spread_that_would_blind_routing_is_refused() {
    let mut bank = small_bank();
    let image = &mut bank.tasks[1].routing.image;
    (image.mean, image.std) = (3.5, 0.25);
    image.descriptors = Rows::new(4, vec![0.5, -1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0], Precision::F16);
    let loaded = Bank::from_bytes(&bank.to_bytes(), "mem").unwrap();
    assert_eq!(loaded.tasks[1].routing.image, bank.tasks[1].routing.image);
    let refused = |edit: &dyn Fn(&mut ucad::bank::ImageStats), field: &str| {
        let mut bad = bank.clone();
        edit(&mut bad.tasks[1].routing.image);
        let err = Bank::from_bytes(&bad.to_bytes(), "crafted.ucad")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("crafted.ucad: invalid bank: task \"b\" routing image ") && err.contains(field),
            "{err}"
        );
    };
    for spread in [f32::NAN, f32::INFINITY, -1.0, 0.0] {
        refused(&|i| i.std = spread, "std");
    }
    refused(&|i| i.mean = f32::NAN, "mean");
    refused(&|i| i.mean = -1.0, "mean");
    refused(
        &|i| i.descriptors = Rows::new(3, vec![0.0; 6], Precision::F32),
        "descriptors rows have dim 3",
    );
    refused(
        &|i| i.descriptors = Rows::new(4, vec![], Precision::F32),
        "descriptors has no rows",
    );
    refused(
        &|i| i.descriptors = Rows::new(4, vec![f32::NAN; 4], Precision::F32),
        "descriptors",
    );
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
                // Task a: 3 f32 rows of 4 in key, knowledge and image descriptors (the key's
                // rows, as an uncalibrated task has them).
                bytes_per_task: 144
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
