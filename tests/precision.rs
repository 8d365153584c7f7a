//! The backbone in f16 (`--compute-precision`, `[runtime] precision`): features close to f32's, and a
//! bank used only in the arithmetic it was fitted in unless the mismatch is allowed.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use ucad::backbone::parity::{token_cosines, CosineStats};
use ucad::backbone::{Arithmetic, Backbone, Preprocessor};
use ucad::bank::format::load_for_backbone;
use ucad::bank::BankError;
use ucad::data::synthetic::textured_image;

/// Lowest per-token cosine of f16 features with f32 ones that passes. f16 keeps 11 significant
/// bits (relative rounding 2^-11 ≈ 5e-4 per operation); a cosine of 0.999 is a relative
/// deviation of √(2·(1 − 0.999)) ≈ 4.5 %, ninety times one rounding: room for the roundings of
/// a few blocks of products and sums, far below what a wrong graph (a cast in the wrong place,
/// LayerNorm overflowing in f16) gives.
const MIN_COSINE: f32 = 0.999;

fn ucad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ucad"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ucad")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn f16_features_are_close_to_f32_features_but_not_equal() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::tiny_backbone(dir.path());
    let f32_backbone = Backbone::load_as(&path, 1, Arithmetic::F32).unwrap();
    let f16_backbone = Backbone::load_as(&path, 1, Arithmetic::F16).unwrap();
    let dim = f32_backbone.meta.feature_dim();
    let mut pre = Preprocessor::new(&f32_backbone.meta);
    let mut per_image = Vec::new();
    for seed in 0..3 {
        let image = textured_image(96, 96, seed);
        let a = f32_backbone.features(pre.tensor(&image).unwrap(), None).unwrap();
        let b = f16_backbone.features(pre.tensor(&image).unwrap(), None).unwrap();
        assert_eq!(a.len(), b.len());
        per_image.push(token_cosines(&a, &b, dim));
    }
    let CosineStats {
        min_cosine: min,
        mean_cosine: mean,
        max_abs_diff: max_diff,
    } = CosineStats::over(&per_image);
    println!(
        "tiny backbone, f16 vs f32 over 3 images: token cosine min {min:.6} mean {mean:.6}, max |diff| {max_diff:.3e}"
    );
    assert!(min >= MIN_COSINE, "min token cosine {min} < {MIN_COSINE}");
    // Equal features would mean the f16 plan never computed in f16.
    assert!(max_diff > 0.0, "f16 features equal f32 ones: nothing ran in f16");
}

#[test]
fn a_prompted_pass_in_f16_is_close_to_f32_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::tiny_backbone(dir.path());
    let f32_backbone = Backbone::load_as(&path, 1, Arithmetic::F32).unwrap();
    let f16_backbone = Backbone::load_as(&path, 1, Arithmetic::F16).unwrap();
    let mut prompt = ucad::backbone::Prompt::zeros(&f32_backbone.meta);
    for (i, v) in prompt.data.iter_mut().enumerate() {
        *v = (i as f32 * 0.61).sin();
    }
    let dim = f32_backbone.meta.feature_dim();
    let mut pre = Preprocessor::new(&f32_backbone.meta);
    let image = textured_image(96, 96, 4);
    let plain = f32_backbone.features(pre.tensor(&image).unwrap(), None).unwrap();
    let a = f32_backbone
        .features(pre.tensor(&image).unwrap(), Some(&prompt))
        .unwrap();
    let b = f16_backbone
        .features(pre.tensor(&image).unwrap(), Some(&prompt))
        .unwrap();
    assert!(
        b.iter().all(|v| v.is_finite()),
        "a prompted f16 pass gives non-finite features"
    );
    assert_ne!(
        a, plain,
        "the prompt changes nothing: the test would not see a lost prompt"
    );
    let min = token_cosines(&a, &b, dim).min_cosine;
    println!("tiny backbone, prompted, f16 vs f32: min token cosine {min:.6}");
    assert!(min >= MIN_COSINE, "min token cosine {min} < {MIN_COSINE}");
}

/// A bank fitted by `ucad fit --precision f32` on the tiny backbone and one test image.
fn fitted_in_f32(dir: &Path) -> (String, String, String) {
    let product = common::TinyProduct::new(dir);
    let backbone = product.backbone.display().to_string();
    let bank = dir.join("bank.ucad").display().to_string();
    let train = product.data.train[0].parent().unwrap().display().to_string();
    let out = ucad(&[
        "fit",
        "--compute-precision",
        "f32",
        "--backbone",
        &backbone,
        "--bank",
        &bank,
        "--task",
        "tiny",
        "--train",
        &train,
    ]);
    assert!(out.status.success(), "fit: {}", stderr(&out));
    let image = product.data.test[0].image.display().to_string();
    (backbone, bank, image)
}

#[test]
fn a_bank_fitted_in_f32_is_refused_under_f16_naming_both_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (backbone, bank, image) = fitted_in_f32(dir.path());
    let score = |extra: &[&str]| {
        let mut args = vec!["score", "--backbone", &backbone, "--bank", &bank];
        args.extend_from_slice(extra);
        args.push(&image);
        ucad(&args)
    };
    assert!(score(&["--compute-precision", "f32"]).status.success());
    let refused = score(&["--compute-precision", "f16"]);
    let err = stderr(&refused);
    assert!(!refused.status.success(), "an f32 bank scored in f16");
    for part in [
        &bank[..],
        "f32 features",
        "computes in f16",
        "re-fit",
        "--allow-precision-mismatch",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    let allowed = score(&["--compute-precision", "f16", "--allow-precision-mismatch"]);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert!(String::from_utf8_lossy(&allowed.stdout).contains("score"));

    // The library's check says the same, and only the allowance lifts it.
    let f16 = Backbone::load_as(Path::new(&backbone), 1, Arithmetic::F16).unwrap();
    let err = load_for_backbone(Path::new(&bank), &f16.spec()).unwrap_err();
    assert!(
        matches!(
            err,
            BankError::OtherArithmetic {
                bank: Arithmetic::F32,
                backbone: Arithmetic::F16,
                ..
            }
        ),
        "{err}"
    );
    assert!(load_for_backbone(Path::new(&bank), &f16.spec().allowing_precision_mismatch(true)).is_ok());
}

#[test]
fn fit_does_not_append_f16_features_to_an_f32_bank_even_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (backbone, bank, _) = fitted_in_f32(dir.path());
    let before = std::fs::read(&bank).unwrap();
    let train = dir.path().join("tiny-train");
    std::fs::create_dir(&train).unwrap();
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .save(train.join("a.png"))
        .unwrap();
    let out = ucad(&[
        "fit",
        "--compute-precision",
        "f16",
        "--allow-precision-mismatch",
        "--backbone",
        &backbone,
        "--bank",
        &bank,
        "--task",
        "other",
        "--train",
        &train.display().to_string(),
    ]);
    let err = stderr(&out);
    assert!(!out.status.success(), "f16 features appended to an f32 bank");
    assert!(
        err.contains("its own precision") && err.contains("f32 features"),
        "{err}"
    );
    assert_eq!(std::fs::read(&bank).unwrap(), before, "the bank changed");
}

/// The tiny product and a bank of it fitted in f16 (saved in `dir`).
fn fitted_in_f16(dir: &Path) -> (common::TinyProduct, Backbone, std::path::PathBuf) {
    let product = common::TinyProduct::new(dir);
    let f16 = Backbone::load_as(&product.backbone, 1, Arithmetic::F16).unwrap();
    let mut bank = ucad::bank::Bank::for_backbone(&f16.spec());
    bank.append(ucad::fit::fit_task(&f16, "tiny", &product.data.train, &Default::default()).unwrap())
        .unwrap();
    let path = dir.join("f16.ucad");
    bank.save(&path).unwrap();
    (product, f16, path)
}

#[test]
fn a_bank_fitted_in_f16_records_it_and_scores_in_f16() {
    let dir = tempfile::tempdir().unwrap();
    let (product, f16, path) = fitted_in_f16(dir.path());
    assert_eq!(
        load_for_backbone(&path, &f16.spec()).unwrap().arithmetic,
        Arithmetic::F16
    );
    let f32 = Backbone::load(&product.backbone).unwrap();
    assert!(matches!(
        load_for_backbone(&path, &f32.spec()),
        Err(BankError::OtherArithmetic {
            bank: Arithmetic::F16,
            backbone: Arithmetic::F32,
            ..
        })
    ));
}

#[test]
fn auto_computes_in_the_precision_of_the_bank_it_scores_with() {
    let dir = tempfile::tempdir().unwrap();
    let (product, _, path) = fitted_in_f16(dir.path());
    let score = |precision: &str| {
        ucad(&[
            "score",
            "--compute-precision",
            precision,
            "--backbone",
            &product.backbone.display().to_string(),
            "--bank",
            &path.display().to_string(),
            &product.data.test[0].image.display().to_string(),
        ])
    };
    // x86 has no FP16 arithmetic: with no bank `auto` would be f32; with this one it is f16.
    let auto = score("auto");
    assert!(auto.status.success(), "{}", stderr(&auto));
    let f32 = score("f32");
    assert!(
        !f32.status.success() && stderr(&f32).contains("fitted on f16 features"),
        "{}",
        stderr(&f32)
    );
}
