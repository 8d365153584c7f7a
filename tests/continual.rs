//! Learning products one after another: earlier tasks are never disturbed, and the whole
//! protocol reports what BENCHMARK.md asks for.

mod common;

use ucad::backbone::extract::extract_features;
use ucad::backbone::Backbone;
use ucad::bank::Bank;
use ucad::data::dataset::load_task;
use ucad::data::synthetic::SplitCounts;
use ucad::detect::{Detector, TaskIndex};
use ucad::eval::protocol::{run, EvalOptions};
use ucad::fit::learner::PlainLearner;
use ucad::fit::{fit_task, FitParams};

const COUNTS: SplitCounts = SplitCounts {
    train: 12,
    test_good: 4,
    test_defective: 4,
};

fn params() -> FitParams {
    FitParams {
        key_rows: 24,
        knowledge_fraction: 0.05,
        ..FitParams::default()
    }
}

#[test]
fn scores_of_the_first_task_are_bit_identical_after_more_tasks_are_learned() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = Backbone::load(&common::tiny_backbone(dir.path())).unwrap();
    let names = common::synthetic_products(dir.path(), 3, COUNTS);
    let bank_path = dir.path().join("bank.ucad");
    let first = load_task(dir.path(), &names[0]).unwrap();
    let test_images: Vec<_> = first.test.iter().map(|t| t.image.clone()).collect();
    let test_features = extract_features(&backbone, &test_images, "test").unwrap();

    let mut bank = Bank::new(
        &backbone.file_sha256,
        backbone.meta.feature_dim(),
        backbone.meta.patches(),
    );
    bank.append(fit_task(&backbone, &names[0], &first.train, &params()).unwrap())
        .unwrap();
    bank.save(&bank_path).unwrap();
    let task_bytes = postcard::to_allocvec(&bank.tasks[0]).unwrap();
    let before: Vec<Vec<f32>> = {
        let detector = Detector::new(&Bank::load(&bank_path).unwrap()).unwrap();
        test_features
            .iter()
            .map(|f| detector.tasks()[0].patch_scores(f).unwrap())
            .collect()
    };

    for name in &names[1..] {
        let mut bank = Bank::load(&bank_path).unwrap();
        let data = load_task(dir.path(), name).unwrap();
        bank.append(fit_task(&backbone, name, &data.train, &params()).unwrap())
            .unwrap();
        bank.save(&bank_path).unwrap();
    }
    let bank = Bank::load(&bank_path).unwrap();
    assert_eq!(bank.tasks.len(), 3);
    assert_eq!(bank.version, 3);
    assert_eq!(
        postcard::to_allocvec(&bank.tasks[0]).unwrap(),
        task_bytes,
        "task 1's stored data changed"
    );
    let index = TaskIndex::new(&bank.tasks[0]).unwrap();
    for (f, want) in test_features.iter().zip(&before) {
        let got = index.patch_scores(f).unwrap();
        let same = got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "task 1 scores changed after tasks 2 and 3 were added");
    }
}

#[test]
fn the_protocol_reports_every_benchmark_key() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = Backbone::load(&common::tiny_backbone(dir.path())).unwrap();
    let names = common::synthetic_products(dir.path(), 2, COUNTS);
    let options = EvalOptions {
        pictures: false,
        fit: params(),
        reference_fraction: 0.1,
        heatmaps: Some(dir.path().join("heat")),
        feature_cache: Some(dir.path().join("cache")),
        save_bank: None,
    };
    let report = run(&backbone, dir.path(), &names, &options, &PlainLearner).unwrap();
    // Two sets × (train, test) entries; a second run reads them and measures the same.
    assert_eq!(std::fs::read_dir(dir.path().join("cache")).unwrap().count(), 4);
    let again = run(&backbone, dir.path(), &names, &options, &PlainLearner).unwrap();
    assert_eq!(
        serde_json::to_value(&again.per_task).unwrap(),
        serde_json::to_value(&report.per_task).unwrap()
    );
    let json = serde_json::to_value(&report).unwrap();
    for key in [
        "tasks",
        "backbone",
        "final",
        "forgetting",
        "routing_accuracy",
        "oracle",
        "matrix",
        "per_task",
        "bank",
        "timing",
    ] {
        assert!(json.get(key).is_some(), "missing key {key}");
    }
    for key in ["image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "f1_max"] {
        assert!(json["final"][key].is_number(), "final.{key} = {}", json["final"][key]);
    }
    let matrix = json["matrix"]["image_auroc"].as_array().unwrap();
    assert_eq!(
        matrix.iter().map(|r| r.as_array().unwrap().len()).collect::<Vec<_>>(),
        vec![1, 2]
    );
    for task in json["per_task"].as_array().unwrap() {
        for key in [
            "task",
            "image_auroc",
            "pixel_auroc",
            "aupro",
            "routing_accuracy",
            "threshold",
            "false_reject_rate",
            "escape_rate",
        ] {
            assert!(task.get(key).is_some(), "per_task misses {key}");
        }
    }
    let heatmaps = std::fs::read_dir(dir.path().join("heat").join(&names[1]))
        .unwrap()
        .count();
    assert_eq!(heatmaps, COUNTS.test_good + COUNTS.test_defective);
    assert!(report.table().contains(&names[0]));
}
