//! One decision rule: the same images through `ucad eval` (the benchmark), `ucad score` and
//! `ucad run` (the inspection loop on a replayed folder with a simulated line) get the same task,
//! the same unknown-product call and the same reject, image by image.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ucad::data::synthetic::SplitCounts;

const COUNTS: SplitCounts = SplitCounts {
    train: 12,
    test_good: 4,
    test_defective: 4,
};

/// What one command decided about an image.
#[derive(Debug, Clone, PartialEq)]
struct Decision {
    /// The judging task; `None` for an unknown product.
    task: Option<String>,
    rejected: bool,
}

fn ucad(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ucad")).args(args).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ucad {args:?}: {log}");
    String::from_utf8(out.stdout).unwrap() + &log
}

/// Adds parts of other products to the second product's test set, as defects (foreign parts on
/// that line): the third product's normal parts, and the first product's with red and blue
/// swapped (its shapes in other colours). The bank of the first two calls some of them unknown.
fn add_foreign_parts(data: &Path, names: &[String]) {
    let host = data.join(&names[1]);
    let foreign = |name: &str, kind: &str, recolour: fn(&mut image::RgbImage)| {
        for dir in ["test", "ground_truth"] {
            std::fs::create_dir_all(host.join(dir).join(kind)).unwrap();
        }
        for entry in std::fs::read_dir(data.join(name).join("test/good")).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            let mut image = image::open(&path).unwrap().to_rgb8();
            recolour(&mut image);
            image
                .save(host.join("test").join(kind).join(format!("{stem}.png")))
                .unwrap();
            image::GrayImage::from_pixel(image.width(), image.height(), image::Luma([255]))
                .save(host.join("ground_truth").join(kind).join(format!("{stem}_mask.png")))
                .unwrap();
        }
    };
    foreign(&names[2], "foreign_product", |_| {});
    foreign(&names[0], "recoloured_product", |image| {
        image.pixels_mut().for_each(|p| p.0.swap(0, 2))
    });
}

/// `ucad eval` on the first two products: its bank and its final decision per image.
fn eval(dir: &Path, backbone: &Path, names: &[String]) -> (PathBuf, Vec<(PathBuf, Decision, bool)>) {
    let (report, bank) = (dir.join("report.json"), dir.join("bank.ucad"));
    let tasks = format!("{},{}", names[0], names[1]);
    ucad(&[
        "eval",
        "--backbone",
        backbone.to_str().unwrap(),
        "--data",
        dir.join("data").to_str().unwrap(),
        "--tasks",
        &tasks,
        "--key-rows",
        "24",
        "--knowledge-fraction",
        "0.05",
        "--json",
        report.to_str().unwrap(),
        "--save-bank",
        bank.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let decisions = report["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let unknown = d["unknown"].as_bool().unwrap();
            let decision = Decision {
                task: (!unknown).then(|| d["judged_as"].as_str().unwrap().to_string()),
                rejected: d["rejected"].as_bool().unwrap(),
            };
            (
                PathBuf::from(d["image"].as_str().unwrap()),
                decision,
                d["beyond_limit"].as_bool().unwrap(),
            )
        })
        .collect();
    (bank, decisions)
}

/// `ucad score`'s decision per image.
fn score(backbone: &Path, bank: &Path, images: &[PathBuf]) -> HashMap<PathBuf, Decision> {
    let mut args = vec![
        "score",
        "--backbone",
        backbone.to_str().unwrap(),
        "--bank",
        bank.to_str().unwrap(),
    ];
    args.extend(images.iter().map(|p| p.to_str().unwrap()));
    let out = ucad(&args);
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" threshold ")).collect();
    assert_eq!(lines.len(), images.len(), "{out}");
    images
        .iter()
        .zip(lines)
        .map(|(path, line)| {
            let rest = line.strip_prefix(&format!("{}: ", path.display())).expect(line);
            let words: Vec<&str> = rest.split(' ').collect();
            let unknown = line.ends_with("REJECT (unknown product)");
            let decision = Decision {
                task: (!unknown).then(|| words[1].to_string()),
                rejected: unknown || line.ends_with(" REJECT"),
            };
            (path.clone(), decision)
        })
        .collect()
}

/// `ucad run` over the images (a folder replayed in name order, simulated line): the decision
/// per frame from the loop's debug log.
fn run(dir: &Path, backbone: &Path, bank: &Path, images: &[PathBuf], tasks: &[String]) -> Vec<Decision> {
    let frames = dir.join("frames");
    std::fs::create_dir(&frames).unwrap();
    for (i, image) in images.iter().enumerate() {
        std::fs::copy(image, frames.join(format!("{i:04}.png"))).unwrap();
    }
    let config = dir.join("line.toml");
    let text = common::device::device_config(backbone, "unused")
        .replace(
            "path = \"bank.ucad\"",
            &format!("path = {:?}", bank.display().to_string()),
        )
        .replace("repeat = true", "repeat = false");
    let text = &text[..text.find("[update]").unwrap()];
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ucad"))
        .args(["run", "--frames", &images.len().to_string(), "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn,ucad::runtime::inspection=debug")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let mut decisions = vec![None; images.len()];
    for line in log.lines() {
        let Some(rest) = line.split("frame ").nth(1) else {
            continue;
        };
        let (number, what) = rest.split_once(": ").unwrap_or(("", ""));
        let Ok(frame) = number.parse::<usize>() else { continue };
        if what.starts_with("no learned product explains it") {
            decisions[frame] = Some(Decision {
                task: None,
                rejected: true,
            });
        } else if let Some(task) = what.strip_prefix("task Some(") {
            let index: usize = task[..task.find(')').unwrap()].parse().unwrap();
            decisions[frame] = Some(Decision {
                task: Some(tasks[index].clone()),
                rejected: what.contains(" rejected true "),
            });
        } else if what.starts_with("task None") {
            assert!(
                decisions[frame].is_some(),
                "frame {frame} fail-safed for another reason: {log}"
            );
        }
    }
    decisions
        .into_iter()
        .enumerate()
        .map(|(i, d)| d.unwrap_or_else(|| panic!("no decision for frame {i}: {log}")))
        .collect()
}

#[test]
fn score_the_loop_and_eval_decide_every_image_alike() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = common::tiny_backbone(dir.path());
    let names = common::synthetic_products(&dir.path().join("data"), 3, COUNTS);
    add_foreign_parts(&dir.path().join("data"), &names);

    let (bank, from_eval) = eval(dir.path(), &backbone, &names);
    let images: Vec<PathBuf> = from_eval.iter().map(|(p, _, _)| p.clone()).collect();
    let unknown = from_eval.iter().filter(|(_, d, _)| d.task.is_none()).count();
    let resolved = from_eval
        .iter()
        .filter(|(_, d, beyond)| *beyond && d.task.is_some())
        .count();
    println!(
        "{} images: {unknown} unknown, {resolved} beyond the nearest task's limit and judged by a candidate",
        images.len()
    );
    assert!(unknown >= 1, "the foreign parts give at least one unknown product");
    assert!(
        from_eval.iter().any(|(_, _, beyond)| *beyond),
        "at least one part is beyond the nearest task's limit"
    );

    let from_score = score(&backbone, &bank, &images);
    let from_run = run(dir.path(), &backbone, &bank, &images, &names[..2]);
    for ((image, decision, _), looped) in from_eval.iter().zip(&from_run) {
        assert_eq!(
            &from_score[image],
            decision,
            "ucad score vs ucad eval: {}",
            image.display()
        );
        assert_eq!(looped, decision, "ucad run vs ucad eval: {}", image.display());
    }
}
