//! `ucad bench-runtime` as a process on the tiny backbone: it ends with the board report a board
//! owner pastes back, every line greppable by its prefix.

mod common;

use std::process::Command;

use sha2::{Digest, Sha256};

#[test]
fn bench_runtime_ends_with_the_board_report() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = common::tiny_backbone(dir.path());
    let output = Command::new(env!("CARGO_BIN_EXE_ucad"))
        .args(["bench-runtime", "--frames", "4", "--threads", "2", "--backbone"])
        .arg(&backbone)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{:?}: {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ucad-board:")).collect();
    let tail: Vec<&str> = stdout.lines().rev().take(report.len()).collect();
    assert_eq!(
        tail.len(),
        report.len(),
        "the report is the end of the output:\n{stdout}"
    );
    assert!(
        tail.iter().all(|l| l.starts_with("ucad-board:")),
        "one block at the end:\n{stdout}"
    );
    let sha = hex::encode(Sha256::digest(std::fs::read(&backbone).unwrap()));
    let field = |key: &str| -> Vec<String> {
        report
            .iter()
            .filter_map(|l| l.strip_prefix("ucad-board:"))
            .filter_map(|l| l.trim_start().strip_prefix(key))
            .map(|v| v.trim().to_string())
            .collect()
    };
    assert_eq!(
        field("backbone"),
        [format!("{} sha256 {}", backbone.display(), &sha[..12])]
    );
    // No FP16 arithmetic on x86: `auto` computes in f32.
    assert_eq!(field("precision"), ["f32"]);
    assert_eq!(
        field("cores"),
        [std::thread::available_parallelism().unwrap().get().to_string()]
    );
    let frames = field("frame_ms");
    assert_eq!(frames.len(), 2, "{stdout}");
    assert!(
        frames[0].contains(" on 1 thread(s)") && frames[1].contains(" on 2 thread(s)"),
        "{frames:?}"
    );
    for key in ["ucad", "board", "cpu", "features"] {
        assert_eq!(field(key).len(), 1, "{key} missing:\n{stdout}");
    }
}
