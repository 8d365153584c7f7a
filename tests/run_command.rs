//! `ucad run` as a process: SIGTERM (what systemd sends) ends it between frames, with its
//! summary written, on the tiny backbone.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigterm_ends_a_run_between_frames_with_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let product = common::TinyProduct::new(dir.path());
    product.bank(0.1, 1).save(&dir.path().join("bank.ucad")).unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for (i, item) in product.data.test.iter().enumerate() {
        std::fs::copy(&item.image, frames.join(format!("{i:02}.png"))).unwrap();
    }
    let config = dir.path().join("board.toml");
    std::fs::write(
        &config,
        format!(
            r#"backbone = "{}"
[bank]
path = "bank.ucad"
[source]
kind = "folder"
path = "frames"
fps = 20.0
repeat = true
[reject]
travel_delay_ms = 500.0
pulse_width_ms = 20.0
[reject.line]
kind = "simulated"
[failsafe]
action = "reject"
deadline_ms = 400.0
stall_ms = 2000.0
[memory]
frame_pool_mib = 16
"#,
            product.backbone.display()
        ),
    )
    .unwrap();
    let summary = dir.path().join("summary.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ucad"))
        .args(["run", "--config"])
        .arg(&config)
        .arg("--summary-json")
        .arg(&summary)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the loop to judge frames (its start-up line), then ask it to stop.
    let (lines, log) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || stderr.lines().map_while(Result::ok).try_for_each(|l| lines.send(l)));
    let start = Instant::now();
    loop {
        let line = log
            .recv_timeout(Duration::from_secs(120))
            .expect("`ucad run` starts inspecting");
        if line.contains("inspecting with") {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: a plain syscall on the child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(180) {
            child.kill().unwrap();
            panic!("`ucad run` did not end on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(status.success(), "{status:?}: {stdout}");
    assert!(stdout.contains("stopped by a signal"), "{stdout}");
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert!(written["frames"].as_u64().unwrap() >= 10, "{written}");
    assert_eq!(written["late_pulses"], 0, "{written}");
}
