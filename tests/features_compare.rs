//! `ucad features --save` on one machine, `--compare` on another (CI: x86 against the ARM build
//! under qemu): the same backbone on the same images matches; a threshold not met and another
//! backbone's features fail with a clear error.

mod common;

use std::path::Path;
use std::process::Command;

use ucad::backbone::{export_to_file, Arch, ExportOptions, VitWeights};

/// Runs `ucad features` with `args`: success, stdout, stderr.
fn features(args: &[&Path]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ucad"))
        .arg("features")
        .args(args)
        .output()
        .expect("run ucad");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn saved_features_match_and_a_miss_or_another_backbone_fails() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = common::tiny_backbone(dir.path());
    let image = dir.path().join("part.png");
    ucad::data::folder::save_image(&ucad::data::synthetic::textured_image(64, 64, 3), &image).unwrap();
    let saved = dir.path().join("saved.safetensors");
    let flag = |s: &'static str| Path::new(s);

    let (ok, _, err) = features(&[flag("--backbone"), &backbone, flag("--save"), &saved, &image]);
    assert!(ok && saved.is_file(), "{err}");

    let (ok, out, err) = features(&[flag("--backbone"), &backbone, flag("--compare"), &saved, &image]);
    assert!(ok, "{err}");
    assert!(
        out.contains("features match") && out.contains("min cosine 1.0000000"),
        "{out}"
    );

    let args = [
        flag("--backbone"),
        &backbone,
        flag("--compare"),
        &saved,
        flag("--min-cosine"),
        flag("1.5"),
        &image,
    ];
    let (ok, _, err) = features(&args);
    assert!(
        !ok && err.contains("features differ from") && err.contains("< 1.5"),
        "{err}"
    );

    let other = dir.path().join("other.onnx");
    let arch = Arch::VitTinyTest;
    let options = ExportOptions {
        input_size: 64,
        blocks: vec![2],
        ..ExportOptions::defaults(arch)
    };
    export_to_file(&VitWeights::random(arch, 12), &options, &other).unwrap();
    let (ok, _, err) = features(&[flag("--backbone"), &other, flag("--compare"), &saved, &image]);
    assert!(!ok && err.contains("features of backbone"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
