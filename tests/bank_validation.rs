//! A bank that cannot work is refused wherever it enters — load, `ucad sign`, `ucad push`, the
//! device's update listener, `ucad score` — with an error naming the file and the field, never a
//! panic; `ucad fit` refuses parameters that would write one. Tiny backbone: no models needed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ed25519_dalek::SigningKey;
use ucad::backbone::BackboneSpec;
use ucad::backbone::{Backbone, Preprocessor, Prompt};
use ucad::bank::format::load_for_backbone;
use ucad::bank::{Bank, Capacity, Precision, Rows};
use ucad::data::synthetic::textured_image;
use ucad::update::policy::{validate, UpdatePolicy};
use ucad::update::signing::{sign, write_key_pair, Line};

struct Fixture {
    dir: tempfile::TempDir,
    backbone: PathBuf,
    spec: BackboneSpec,
    key: SigningKey,
    key_file: PathBuf,
    image: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let backbone = common::tiny_backbone(dir.path());
    let spec = Backbone::read_spec(&backbone).unwrap();
    let key = SigningKey::from_bytes(&[7; 32]);
    let key_file = dir.path().join("line.key");
    write_key_pair(&key_file, &key).unwrap();
    let image = dir.path().join("part.png");
    textured_image(64, 64, 3).save(&image).unwrap();
    Fixture {
        dir,
        backbone,
        spec,
        key,
        key_file,
        image,
    }
}

fn line() -> Line {
    Line::new("line-1").unwrap()
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ucad ARGS` with the fixture's folder as the model cache.
    fn ucad(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ucad"))
            .args(args)
            .env("UCAD_MODELS", self.dir.path())
            .output()
            .unwrap()
    }

    /// `ucad VERB` (sign or push) of `bank` with the fixture's key, for line-1.
    fn bank_args<'a>(&'a self, verb: &'a str, bank: &'a Path) -> [&'a str; 7] {
        let key = arg(&self.key_file);
        [verb, "--bank", arg(bank), "--key", key, "--line", "line-1"]
    }

    /// `ucad sign` of `bank` into `out`.
    fn sign_args<'a>(&'a self, bank: &'a Path, out: &'a Path) -> Vec<&'a str> {
        [&self.bank_args("sign", bank)[..], &["--out", arg(out)]].concat()
    }

    fn policy(&self) -> UpdatePolicy {
        UpdatePolicy {
            trusted: vec![self.key.verifying_key()],
            backbone: self.spec.clone(),
            capacity: Capacity {
                tasks: 8,
                bytes_per_task: 1 << 24,
            },
            max_bytes: 1 << 24,
            line: line(),
            request_deadline: std::time::Duration::from_secs(30),
        }
    }
}

/// Each defect: what it is, the field its error names, the bank.
fn defects(spec: &BackboneSpec) -> Vec<(&'static str, &'static str, Bank)> {
    let valid = common::random_bank(spec);
    let edited = |edit: &dyn Fn(&mut Bank)| {
        let mut bank = valid.clone();
        edit(&mut bank);
        bank
    };
    let with_nan = |rows: usize, dim: usize| {
        let mut values = vec![0.25; rows * dim];
        values[3 * dim + 1] = f32::NAN;
        values
    };
    let short_prompt = edited(&|b| {
        let prompt = b.tasks[0].prompt.as_mut().unwrap();
        let values = (2 * prompt.blocks * prompt.len - 1) as usize * spec.embed_dim;
        prompt.rows = Rows::new(spec.embed_dim, vec![0.1; values], Precision::F32);
    });
    let nan_threshold = edited(&|b| b.tasks[0].threshold = f32::NAN);
    let nan_image_spread = edited(&|b| b.tasks[1].routing.image.std = f32::NAN);
    let nan_knowledge = |precision| {
        edited(&|b| b.tasks[0].knowledge = Rows::new(spec.feature_dim, with_nan(40, spec.feature_dim), precision))
    };
    let infinite_projection = edited(&|b| {
        let projection = b.tasks[1].projection.as_mut().unwrap();
        let mut components = projection.components.to_f32();
        components[5] = f32::INFINITY;
        projection.components = Rows::new(spec.feature_dim, components, Precision::F16);
    });
    let other_dim = common::random_bank(&BackboneSpec {
        feature_dim: spec.feature_dim / 2,
        ..spec.clone()
    });
    vec![
        ("a prompt one row short", "prompt", short_prompt),
        ("a NaN threshold", "threshold", nan_threshold),
        ("a NaN image routing spread", "routing image std", nan_image_spread),
        ("a NaN knowledge row (f32)", "knowledge", nan_knowledge(Precision::F32)),
        ("a NaN knowledge row (f16)", "knowledge", nan_knowledge(Precision::F16)),
        ("an infinite projection value", "projection", infinite_projection),
        ("another feature_dim", "feature_dim", other_dim),
    ]
}

/// A command that failed with an error (exit 1, not a panic's 101) saying `wanted`.
fn assert_refused(output: &Output, wanted: &[&str], what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    for w in wanted {
        assert!(stderr.contains(w), "{what}: no {w:?} in {stderr}");
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_valid_bank_passes_every_check_and_its_backbone_is_found_in_the_cache() {
    let f = fixture();
    let path = f.path("valid.ucad");
    common::random_bank(&f.spec).save(&path).unwrap();
    assert!(load_for_backbone(&path, &f.spec).is_ok());
    let envelope = sign(&std::fs::read(&path).unwrap(), &line(), &f.key);
    assert!(validate(&envelope, &f.policy(), 0).is_ok());
    // No --backbone: the cache (the fixture's folder) holds the bank's backbone.
    let out = f.path("valid.signed");
    let signed = f.ucad(&f.sign_args(&path, &out));
    assert!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), envelope);
    let scored = f.ucad(&[
        "score",
        "--backbone",
        arg(&f.backbone),
        "--bank",
        arg(&path),
        arg(&f.image),
    ]);
    assert!(scored.status.success(), "{}", String::from_utf8_lossy(&scored.stderr));
    // A backbone the cache does not hold: the error says to name it.
    std::fs::remove_file(&f.backbone).unwrap();
    let unknown = f.ucad(&f.sign_args(&path, &out));
    assert_refused(&unknown, &["valid.ucad", "--backbone"], "backbone not in the cache");
}

#[test]
fn a_bank_that_cannot_work_is_refused_by_load_sign_push_the_listener_and_score() {
    let f = fixture();
    for (i, (what, field, bank)) in defects(&f.spec).into_iter().enumerate() {
        let name = format!("defect-{i}.ucad");
        let path = f.path(&name);
        // Only the backbone tells a bank of another feature_dim; nothing writes the others.
        assert_eq!(bank.save(&path).is_err(), field != "feature_dim", "{what}");
        std::fs::write(&path, bank.to_bytes()).unwrap();

        let err = load_for_backbone(&path, &f.spec).unwrap_err().to_string();
        assert!(err.contains(&name) && err.contains(field), "{what}: {err}");

        let out = f.path("out.signed");
        let backbone = ["--backbone", arg(&f.backbone)];
        let signing = [&f.sign_args(&path, &out)[..], &backbone].concat();
        assert_refused(&f.ucad(&signing), &[&name, field], &format!("sign {what}"));
        assert!(!out.exists(), "{what}: signed");

        let device = ["--device", "127.0.0.1:9"];
        let pushing = [&f.bank_args("push", &path)[..], &device, &backbone].concat();
        assert_refused(&f.ucad(&pushing), &[&name, field], &format!("push {what}"));
        let envelope = sign(&bank.to_bytes(), &line(), &f.key);
        let signed = f.path(&format!("{name}.signed"));
        std::fs::write(&signed, &envelope).unwrap();
        let pushing = [&["push", "--bank", arg(&signed)][..], &device, &backbone].concat();
        assert_refused(&f.ucad(&pushing), &[&name, field], &format!("push signed {what}"));

        let refusal = validate(&envelope, &f.policy(), 0).unwrap_err();
        assert_eq!(refusal.status, 422, "{what}: {}", refusal.message);
        assert!(refusal.message.contains(field), "{what}: {}", refusal.message);

        let scoring = [
            "score",
            "--backbone",
            arg(&f.backbone),
            "--bank",
            arg(&path),
            arg(&f.image),
        ];
        assert_refused(&f.ucad(&scoring), &[&name, field], &format!("score {what}"));
    }
}

#[test]
fn a_prompt_of_the_wrong_length_is_an_error_in_the_backbone_not_a_panic() {
    let f = fixture();
    let backbone = Backbone::load(&f.backbone).unwrap();
    let image = Preprocessor::new(&backbone.meta)
        .tensor(&textured_image(64, 64, 1))
        .unwrap();
    let mut prompt = Prompt::zeros(&backbone.meta);
    assert!(backbone.features(image.clone(), Some(&prompt)).is_ok());
    prompt.data.pop();
    let err = backbone.features(image, Some(&prompt)).unwrap_err().to_string();
    assert!(err.contains("does not fit this backbone"), "{err}");
}

#[test]
fn fit_refuses_a_nan_false_reject_rate_naming_the_flag() {
    let f = fixture();
    let bank = f.path("fitted.ucad");
    for (flag, value) in [
        ("--false-reject", "nan"),
        ("--knowledge-fraction", "-0.5"),
        ("--holdout", "inf"),
        ("--key-rows", "0"),
    ] {
        let fitting = [
            "fit",
            "--backbone",
            arg(&f.backbone),
            "--bank",
            arg(&bank),
            "--task",
            "widget",
            "--train",
            arg(f.dir.path()),
            &format!("{flag}={value}"),
        ];
        assert_refused(&f.ucad(&fitting), &[flag], &format!("fit {flag} {value}"));
        assert!(!bank.exists(), "{flag} {value}: a bank was written");
    }
}
