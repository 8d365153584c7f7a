//! `bench-routing --html` and `bench-bank --html` on generated products with the tiny backbone:
//! each page opens in a headless Chromium and shows the JSON report's numbers.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::browser::{headless, shows_the_json};

fn run_with_pages(dir: &Path, args: &[&str]) -> (serde_json::Value, String) {
    let backbone = common::tiny_backbone(dir);
    let cache = dir.join("cache");
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.extend([
        OsStr::new("--backbone"),
        backbone.as_os_str(),
        OsStr::new("--feature-cache"),
        cache.as_os_str(),
    ]);
    let (report, html) = common::ucad_with_reports(dir, &all);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("<script") && !page.contains("src=\"http"));
    (report, headless(&format!("file://{}", html.display()), &["--dump-dom"]))
}

#[test]
fn the_routing_page_shows_the_json_reports_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let counts = ["--train", "8", "--test-good", "2", "--test-defective", "2"];
    let mut args = vec![
        "bench-routing",
        "--synthetic",
        "3",
        "--size",
        "64",
        "--order-seeds",
        "1,2",
    ];
    args.extend(counts);
    let (report, dom) = run_with_pages(dir.path(), &args);
    // Four headline numbers, six per stage (3 stages, 2 orders), three per product left out.
    assert_eq!(shows_the_json(&dom, &report), 4 + 6 * 3 * 2 + 3 * 3);
}

#[test]
fn the_bank_page_shows_the_json_reports_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let counts = ucad::data::synthetic::SplitCounts {
        train: 8,
        test_good: 2,
        test_defective: 2,
    };
    let names = common::synthetic_products(dir.path(), 2, counts);
    let data = dir.path().display().to_string();
    let tasks = names.join(",");
    let (report, dom) = run_with_pages(dir.path(), &["bench-bank", "--data", &data, "--tasks", &tasks]);
    let settings = report.as_array().unwrap().len();
    assert!(settings > 1);
    assert_eq!(shows_the_json(&dom, &report), settings * names.len());
}
