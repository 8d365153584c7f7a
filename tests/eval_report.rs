//! `ucad eval --html` on generated products with the default backbone: the page opens in a real
//! headless Chromium without network, every number it shows equals the JSON report's value at
//! the same key, and its galleries hold an overlay for every case they list.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::browser::{headless, shows_the_json};
use ucad::backbone::models::ModelCache;
use ucad::backbone::Arch;
use ucad::data::synthetic::{products, SplitCounts};

#[test]
fn the_html_report_shows_the_json_reports_numbers() {
    if !common::models_present(&ModelCache::locate(), Arch::VitB16Clip) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let counts = SplitCounts {
        train: 20,
        test_good: 6,
        test_defective: 6,
    };
    let names: Vec<String> = products(3, 9)
        .iter()
        .map(|p| {
            p.write_mvtec(&data, 224, counts).unwrap();
            p.name.clone()
        })
        .collect();
    let tasks = names.join(",");
    let args = [
        OsStr::new("eval"),
        OsStr::new("--data"),
        data.as_os_str(),
        OsStr::new("--tasks"),
        OsStr::new(&tasks),
    ];
    let (report, html) = common::ucad_with_reports(dir.path(), &args);

    let dom = headless(&format!("file://{}", html.display()), &["--dump-dom"]);
    // 7 headline numbers, oracle and reference (2 each), 10 per task, four triangular matrices.
    let tasks = names.len();
    let shown = shows_the_json(&dom, &report);
    assert_eq!(shown, 7 + 4 + 10 * tasks + 4 * tasks * (tasks + 1) / 2);

    // Self-contained: no script, nothing fetched, every picture inline.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("<script"));
    for attribute in ["src=\"", "href=\""] {
        for link in page.split(attribute).skip(1).map(|s| s.split('"').next().unwrap()) {
            assert!(
                link.starts_with("data:image/jpeg;base64,") || link.starts_with('#'),
                "{link:.60}"
            );
        }
    }
    let figures = page.matches("<figure>").count();
    assert!(figures > 0, "at least the caught defects are shown");
    assert_eq!(
        page.matches("<figure><img").count(),
        figures,
        "every listed case has its overlay"
    );

    if let Some(shots) = std::env::var_os("UCAD_SCREENSHOT_DIR") {
        screenshots(Path::new(&shots), &page, dir.path());
    }
}

/// The report's first screen, and its first task's galleries alone (headless Chromium does not
/// scroll to a fragment before it takes a screenshot).
fn screenshots(shots: &Path, page: &str, dir: &Path) {
    headless(
        &format!("file://{}", dir.join("report.html").display()),
        &[&format!("--screenshot={}", shots.join("eval-report.png").display())],
    );
    let section = page.find("<section id=\"task-0\"").unwrap();
    let title = &page[section..section + page[section..].find("</h2>").unwrap() + "</h2>".len()];
    let start = section + page[section..].find("<h3").unwrap();
    let end = start + page[start..].find("</section>").unwrap();
    let head = &page[..page.find("<body>").unwrap() + "<body>".len()];
    let task = dir.join("task.html");
    std::fs::write(
        &task,
        format!("{head}{title}{}</section></body></html>", &page[start..end]),
    )
    .unwrap();
    headless(
        &format!("file://{}", task.display()),
        &[&format!("--screenshot={}", shots.join("eval-task.png").display())],
    );
}
