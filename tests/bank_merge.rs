//! Fitting at scale: three products fitted in three `ucad fit` processes at once, merged with
//! `ucad bank merge`, judge exactly like the three fitted in sequence into one bank; mismatched
//! banks are refused by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ucad::bank::Bank;
use ucad::data::synthetic::SplitCounts;

fn ucad(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ucad"))
        .args(args)
        .args(paths)
        .output()
        .unwrap()
}

fn succeeded(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

fn refused(out: Output) -> String {
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fit_command(backbone: &Path, bank: &Path, data: &Path, product: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ucad"));
    command
        .args(["fit", "--task", product, "--backbone"])
        .arg(backbone)
        .arg("--bank")
        .arg(bank)
        .arg("--train")
        .arg(data.join(product).join("train/good"));
    command
}

#[test]
fn three_products_fitted_apart_and_merged_judge_like_one_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let counts = SplitCounts {
        train: 12,
        test_good: 3,
        test_defective: 3,
    };
    let products = common::synthetic_products(&data, 3, counts);
    let backbone = common::tiny_backbone(dir.path());

    let apart: Vec<PathBuf> = products.iter().map(|p| dir.path().join(format!("{p}.ucad"))).collect();
    let jobs: Vec<_> = (products.iter().zip(&apart))
        .map(|(product, bank)| {
            let mut fit = fit_command(&backbone, bank, &data, product);
            fit.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for job in jobs {
        succeeded(job.wait_with_output().unwrap());
    }
    let sequence = dir.path().join("sequence.ucad");
    for product in &products {
        succeeded(fit_command(&backbone, &sequence, &data, product).output().unwrap());
    }
    let merged = dir.path().join("merged.ucad");
    let inputs: Vec<&Path> = apart.iter().map(PathBuf::as_path).collect();
    let said = succeeded(ucad(&["bank", "merge"], &[&[merged.as_path()], &inputs[..]].concat()));
    assert!(
        said.contains(&format!("tasks {} in this order", products.join(", "))),
        "{said}"
    );

    let (one, other) = (Bank::load(&sequence).unwrap(), Bank::load(&merged).unwrap());
    assert_eq!(one, other, "the same bank, version included");
    let images: Vec<PathBuf> = (products.iter())
        .flat_map(|p| std::fs::read_dir(data.join(p).join("test")).unwrap())
        .flat_map(|kind| std::fs::read_dir(kind.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(images.len(), 18);
    let score = |bank: &Path| {
        let image_paths: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
        succeeded(ucad(
            &[
                "score",
                "--backbone",
                backbone.to_str().unwrap(),
                "--bank",
                bank.to_str().unwrap(),
            ],
            &image_paths,
        ))
    };
    assert_eq!(score(&sequence), score(&merged));
}

#[test]
fn banks_that_do_not_fit_together_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let product = common::TinyProduct::new(dir.path());
    let a = dir.path().join("a.ucad");
    product.bank(0.1, 1).save(&a).unwrap();
    let mut renamed = product.bank(0.1, 1);
    renamed.tasks[0].name = "other".into();
    let b = dir.path().join("b.ucad");
    renamed.save(&b).unwrap();
    let out = dir.path().join("out.ucad");

    let err = refused(ucad(&["bank", "merge"], &[&out, &a, &a]));
    assert!(err.contains("a.ucad: task") && err.contains("is also in"), "{err}");
    let mut f16 = renamed.clone();
    f16.arithmetic = ucad::backbone::Arithmetic::F16;
    let c = dir.path().join("c.ucad");
    f16.save(&c).unwrap();
    let err = refused(ucad(&["bank", "merge"], &[&out, &a, &c]));
    assert!(err.contains("c.ucad has arithmetic f16"), "{err}");
    let mut foreign = renamed.clone();
    foreign.backbone_sha256 = "cd".repeat(32);
    foreign.save(&c).unwrap();
    let err = refused(ucad(&["bank", "merge"], &[&out, &a, &c]));
    assert!(err.contains("c.ucad has backbone sha256"), "{err}");
    let err = refused(ucad(&["bank", "merge", "--capacity-tasks", "1"], &[&out, &a, &b]));
    assert!(err.contains("2 tasks, room for 1"), "{err}");
    assert!(!out.exists(), "nothing written for a refused merge");

    succeeded(ucad(&["bank", "merge"], &[&out, &a, &b]));
    let err = refused(ucad(&["bank", "merge"], &[&out, &a, &b]));
    assert!(err.contains("exists: merge into a new file"), "{err}");
    assert_eq!(Bank::load(&out).unwrap().version, 2);
}
