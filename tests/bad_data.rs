//! Bad training and test data through the `ucad` binary: a clear error naming the file or
//! folder, a non-zero exit, and no panic.

mod common;

use std::path::Path;
use std::process::Command;

fn ucad(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ucad"))
        .args(args)
        .output()
        .expect("run ucad");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "ucad panicked: {stderr}");
    (out.status.success(), stderr)
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `ucad fit` of task `p` from the images in `train`.
fn fit(backbone: &Path, bank: &Path, train: &Path) -> (bool, String) {
    ucad(&[
        "fit",
        "--backbone",
        arg(backbone),
        "--bank",
        arg(bank),
        "--task",
        "p",
        "--train",
        arg(train),
    ])
}

#[test]
fn an_empty_train_folder_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = common::tiny_backbone(dir.path());
    let empty = dir.path().join("empty_train");
    std::fs::create_dir(&empty).unwrap();
    let bank = dir.path().join("bank.ucad");
    let (ok, err) = fit(&backbone, &bank, &empty);
    assert!(!ok && err.contains("empty_train") && err.contains("no images"), "{err}");
    assert!(!bank.exists(), "a failed fit wrote a bank");
}

#[test]
fn a_mask_of_the_wrong_size_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = common::tiny_backbone(dir.path());
    let counts = ucad::data::synthetic::SplitCounts {
        train: 6,
        test_good: 2,
        test_defective: 2,
    };
    let names = common::synthetic_products(dir.path(), 1, counts);
    let mask_dir = dir.path().join(&names[0]).join("ground_truth");
    let mask = std::fs::read_dir(mask_dir.read_dir().unwrap().next().unwrap().unwrap().path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    image::GrayImage::new(10, 12).save(&mask).unwrap();
    let (ok, err) = ucad(&[
        "eval",
        "--backbone",
        arg(&backbone),
        "--data",
        arg(dir.path()),
        "--tasks",
        &names[0],
    ]);
    assert!(!ok && err.contains(arg(&mask)) && err.contains("10×12"), "{err}");
}

#[test]
fn a_missing_dataset_and_an_unreadable_image_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = common::tiny_backbone(dir.path());
    let (ok, err) = ucad(&[
        "eval",
        "--backbone",
        arg(&backbone),
        "--data",
        arg(dir.path()),
        "--tasks",
        "nothing_here",
    ]);
    assert!(!ok && err.contains("nothing_here"), "{err}");

    let train = dir.path().join("train");
    std::fs::create_dir(&train).unwrap();
    std::fs::write(train.join("broken.png"), b"not a png").unwrap();
    std::fs::write(train.join("other.png"), b"nor this").unwrap();
    let bank = dir.path().join("bank.ucad");
    let (ok, err) = fit(&backbone, &bank, &train);
    assert!(!ok && err.contains("broken.png"), "{err}");
}

#[test]
fn a_damaged_bank_is_refused_by_score() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = common::tiny_backbone(dir.path());
    let bank = dir.path().join("bank.ucad");
    std::fs::write(&bank, b"UCADBANK\x01\x00\x00\x00").unwrap();
    let image = dir.path().join("x.png");
    ucad::data::synthetic::textured_image(64, 64, 1).save(&image).unwrap();
    let (ok, err) = ucad(&["score", "--backbone", arg(&backbone), "--bank", arg(&bank), arg(&image)]);
    assert!(!ok && err.contains("bank.ucad") && err.contains("truncated"), "{err}");
}
