//! `ucad run` as a process on the tiny backbone: SIGTERM (what systemd sends) ends it between
//! frames, and a panic injected into judging gives the fail-safe; the summary is written.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::device::Device;

#[test]
fn sigterm_ends_a_run_between_frames_with_its_summary() {
    let device = Device::new();

    let summary = device.dir.path().join("summary.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ucad"))
        .args(["run", "--config"])
        .arg(&device.config)
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

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection (the README's test command)"
)]
fn a_panic_injected_into_judging_gives_the_fail_safe_and_the_summary() {
    let device = Device::new();

    let summary = device.dir.path().join("summary.json");
    let output = Command::new(env!("CARGO_BIN_EXE_ucad"))
        .args(["run", "--frames", "12", "--config"])
        .arg(&device.config)
        .arg("--summary-json")
        .arg(&summary)
        .env("UCAD_PANIC_AT_FRAMES", "4,9")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {log}", output.status);
    for frame in [4, 9] {
        let line = format!("frame {frame}: judging panicked: injected panic while judging frame {frame}");
        assert!(log.contains(&line), "{log}");
    }
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(written["frames"], 12, "{written}");
    assert_eq!(written["judging_panics"], 2, "{written}");
    assert!(written["failsafe_rejects"].as_u64().unwrap() >= 2, "{written}");
    assert_eq!(
        written["bank_demotions"], 0,
        "a bank that judged frames before is not demoted: {written}"
    );
}

#[test]
fn a_thread_count_beyond_the_bound_is_refused_naming_the_flag() {
    for value in ["257", "-1", "all"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ucad"))
            .args(["features", "--backbone", "absent.onnx", &format!("--threads={value}")])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("--threads"), "{value}: {err}");
    }
}
