//! `ucad fit` says where its threshold sits among the held-out normal scores, and `--report`
//! draws them, the drawn defects' scores and the threshold in a self-contained HTML page.

mod common;

use std::process::Command;

#[test]
fn fit_places_its_threshold_and_draws_both_distributions() {
    let dir = tempfile::tempdir().unwrap();
    let product = common::TinyProduct::new(dir.path());
    let (bank, report) = (dir.path().join("bank.ucad"), dir.path().join("fit.html"));
    let train = product.data.train[0].parent().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ucad"))
        .args(["fit", "--task", "cap <b>", "--backbone"])
        .arg(&product.backbone)
        .arg("--bank")
        .arg(&bank)
        .arg("--train")
        .arg(train)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // "threshold T is above K of the N held-out normal scores (...)"
    let line = stdout
        .lines()
        .find(|l| l.contains("held-out normal scores"))
        .expect("the placement");
    let words: Vec<&str> = line.split_whitespace().collect();
    let (above, held): (usize, usize) = (words[4].parse().unwrap(), words[7].parse().unwrap());
    assert!(held >= 1 && above <= held, "{line}");
    let drawn: usize = {
        let words: Vec<&str> = stdout.split_whitespace().collect();
        let at = words
            .windows(2)
            .position(|w| w == ["drawn", "onto"])
            .expect("the escape estimate");
        words[at - 1].parse().unwrap()
    };

    let page = std::fs::read_to_string(&report).unwrap();
    assert!(page.contains("<h1>cap &lt;b&gt;</h1>"), "the name as text");
    assert!(page.contains("<svg") && page.contains("id=\"threshold\""));
    assert!(
        !page.contains("<script") && !page.contains("http://") || page.contains("xmlns=\"http://www.w3.org/2000/svg\"")
    );
    let total = |class: &str| -> usize {
        page.split(&format!("<rect class=\"{class}\""))
            .skip(1)
            .map(|r| {
                r.split("<title>")
                    .nth(1)
                    .unwrap()
                    .split('<')
                    .next()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum()
    };
    assert_eq!(total("normal"), held, "every held-out normal score drawn");
    assert_eq!(total("defect"), drawn, "every drawn defect's score drawn");
}
