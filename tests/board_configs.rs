//! Every shipped board config parses and passes its checks; bad configs name the problem.

use std::path::Path;

use ucad::backbone::Backbone;
use ucad::runtime::config::{FailsafeAction, LineConfig, RunConfig, SourceConfig};
use ucad::runtime::inspection::Inspector;
use ucad::runtime::source::Replay;

#[test]
fn every_board_config_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("board");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = RunConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(
                config.bank.path.is_absolute() || config.bank.path.starts_with(&dir),
                "{}",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 4, "expected sim, rpi4, rpi5 and jetson configs, found {seen}");
    let jetson = RunConfig::load(&dir.join("jetson-orin-nano.toml")).unwrap();
    assert!(matches!(jetson.reject.line, LineConfig::Gpiocdev { line: 85, .. }));
    assert!(matches!(
        RunConfig::load(&dir.join("sim.toml")).unwrap().source,
        SourceConfig::Conveyor { .. }
    ));
}

#[test]
fn a_deadline_past_the_reject_gate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = include_str!("../board/sim.toml").replace("deadline_ms = 1200.0", "deadline_ms = 2000.0");
    let path = dir.path().join("late.toml");
    std::fs::write(&path, text).unwrap();
    let err = format!("{:#}", RunConfig::load(&path).unwrap_err());
    assert!(err.contains("late.toml") && err.contains("deadline_ms"), "{err}");

    std::fs::write(&path, "bank = 3").unwrap();
    let err = format!("{:#}", RunConfig::load(&path).unwrap_err());
    assert!(err.contains("late.toml"), "{err}");
}

/// The tiny backbone, three frames in a folder, and sim.toml replaying them with no bank: a
/// loop that runs without the default models.
fn folder_run(dir: &Path) -> (Backbone, RunConfig, Replay) {
    let backbone = {
        use ucad::backbone::{export_to_file, Arch, ExportOptions, VitWeights};
        let path = dir.join("tiny.onnx");
        let options = ExportOptions {
            input_size: 64,
            ..ExportOptions::defaults(Arch::VitTinyTest)
        };
        export_to_file(&VitWeights::random(Arch::VitTinyTest, 1), &options, &path).unwrap();
        Backbone::load(&path).unwrap()
    };
    let frames = dir.join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..3 {
        ucad::data::synthetic::textured_image(64, 64, i)
            .save(frames.join(format!("{i}.png")))
            .unwrap();
    }
    let mut config: RunConfig = toml::from_str(SIM).unwrap();
    config.bank.path = dir.join("missing.ucad");
    config.source = SourceConfig::Folder {
        path: frames.clone(),
        fps: 50.0,
        repeat: false,
    };
    let source = ucad::runtime::source::folder(&frames, 50.0, false).unwrap();
    (backbone, config, source)
}

#[test]
fn a_missing_bank_makes_every_part_a_failsafe_reject() {
    let dir = tempfile::tempdir().unwrap();
    let (backbone, config, mut source) = folder_run(dir.path());
    let outcome = Inspector::new(backbone, config).run(&mut source, None).unwrap();
    assert_eq!(outcome.summary.frames, 3);
    assert_eq!(outcome.summary.failsafe_rejects, 3);
    assert!(outcome.parts.is_empty() || outcome.parts.iter().all(|p| p.rejected && p.failsafe.is_some()));
}

#[test]
fn a_stop_line_that_cannot_be_opened_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (backbone, mut config, mut source) = folder_run(dir.path());
    config.failsafe.action = FailsafeAction::StopLine;
    config.failsafe.stop_line = Some(LineConfig::Gpiocdev {
        chip: dir.path().join("no-such-gpiochip"),
        line: 3,
        active_high: true,
    });
    let Err(err) = Inspector::new(backbone, config).run(&mut source, None) else {
        panic!("the loop started without its stop line");
    };
    assert!(format!("{err:#}").contains("failsafe.stop_line"), "{err:#}");
}

#[test]
fn a_fifo_or_a_device_named_as_a_config_or_key_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a plain syscall on a path this test owns.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    for path in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
        let err = format!("{:#}", RunConfig::load(path).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");
        let err = format!("{:#}", ucad::update::signing::read_public_key(path).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");
    }
}

const SIM: &str = include_str!("../board/sim.toml");

/// The error loading sim.toml with `from` replaced by `to` (which must occur), as a string.
fn refusal(from: &str, to: &str) -> String {
    assert!(SIM.contains(from), "{from}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.toml");
    std::fs::write(&path, SIM.replacen(from, to, 1)).unwrap();
    match RunConfig::load(&path) {
        Ok(_) => panic!("{to} was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn odd_config_values_are_refused_naming_the_file_and_the_key() {
    let durations = [
        ("travel_delay_ms = 1500.0", "reject.travel_delay_ms"),
        ("pulse_width_ms = 40.0", "reject.pulse_width_ms"),
        ("stall_ms = 900.0", "failsafe.stall_ms"),
        ("deadline_ms = 1200.0", "failsafe.deadline_ms"),
    ];
    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    for (line, key) in durations {
        let name = line.split(" = ").next().unwrap();
        for value in ["inf", "1e300", "1e22", "nan", "-5.0", "0.0"] {
            cases.push((line, format!("{name} = {value}"), key));
        }
    }
    for (from, to, key) in [
        ("fps = 2.0", "fps = 1e-300", "source.fps"),
        ("fps = 2.0", "fps = inf", "source.fps"),
        ("products = 3", "products = 100000000000", "source.products"),
        ("size = 256", "size = 4000000000", "source.size"),
        ("max_mib = 20", "max_mib = 17592186044416", "audit.max_mib"),
        ("max_mib = 20", "max_mib = 20\nqueue = 100000000000", "audit.queue"),
        (
            "frame_pool_mib = 64",
            "frame_pool_mib = 1000000000000",
            "memory.frame_pool_mib",
        ),
        (
            "capacity_tasks = 32",
            "capacity_tasks = 1000000000000",
            "bank.capacity_tasks",
        ),
        (
            "frame_pool_mib = 64",
            "frame_pool_mib = 64\n[runtime]\nthreads = 257",
            "runtime.threads",
        ),
        (
            "frame_pool_mib = 64",
            "frame_pool_mib = 64\n[runtime]\nthreads = -1",
            "runtime.threads",
        ),
        (
            "frame_pool_mib = 64",
            "frame_pool_mib = 64\n[runtime]\nthreads = \"all\"",
            "runtime.threads",
        ),
        (
            "frame_pool_mib = 64",
            "frame_pool_mib = 64\n[runtime]\nprecision = \"f64\"",
            "runtime.precision",
        ),
        (
            "frame_pool_mib = 64",
            "frame_pool_mib = 64\n[runtime]\nprecision = 16",
            "runtime.precision",
        ),
        (
            "frame_pool_mib = 64",
            "frame_pool_mib = 64\n[runtime]\nallow_precision_mismatch = \"yes\"",
            "runtime.allow_precision_mismatch",
        ),
        ("log_every_s = 5.0", "log_every_s = nan", "log_every_s"),
        ("log_every_s = 5.0", "log_every_s = -1.0", "log_every_s"),
        ("log_every_s = 5.0", "log_every_s = 1e300", "log_every_s"),
        // 200 fps × 1.54 s from camera to the end of a pulse: more parts in flight than the
        // reject queue holds.
        ("fps = 2.0", "fps = 200.0", "source.fps"),
        // A pulse as long as the time between parts (500 ms at 2 fps) rejects the next part too.
        (
            "pulse_width_ms = 40.0",
            "pulse_width_ms = 500.0",
            "reject.pulse_width_ms",
        ),
        // A stall known only after 1100 ms (+ one 500 ms frame) is covered after its parts
        // reached the gate (1500 ms); one shorter than a frame would be every frame.
        ("stall_ms = 900.0", "stall_ms = 1100.0", "failsafe.stall_ms"),
        ("stall_ms = 900.0", "stall_ms = 400.0", "failsafe.stall_ms"),
    ] {
        cases.push((from, to.to_string(), key));
    }
    for (from, to, key) in &cases {
        let err = refusal(from, to);
        assert!(err.contains("odd.toml") && err.contains(key), "{to:?}: {err}");
    }
}

#[test]
fn runtime_threads_default_to_all_cores_and_take_any_count_up_to_the_bound() {
    let base = std::path::Path::new(".");
    assert_eq!(
        RunConfig::parse(SIM, base).unwrap().runtime.threads,
        0,
        "absent: all cores"
    );
    for threads in [0, 1, 3, 256] {
        let text = SIM.replacen(
            "frame_pool_mib = 64",
            &format!("frame_pool_mib = 64\n[runtime]\nthreads = {threads}"),
            1,
        );
        assert_eq!(RunConfig::parse(&text, base).unwrap().runtime.threads, threads);
    }
    let all = ucad::parallel::resolve(0).unwrap();
    assert_eq!(all, std::thread::available_parallelism().unwrap().get());
    assert_eq!(ucad::parallel::resolve(3).unwrap(), 3);
}

#[test]
fn runtime_precision_defaults_to_auto_and_takes_each_choice() {
    use ucad::backbone::ArithmeticChoice;
    let base = std::path::Path::new(".");
    let runtime = RunConfig::parse(SIM, base).unwrap().runtime;
    assert_eq!(runtime.precision, ArithmeticChoice::Auto);
    assert!(!runtime.allow_precision_mismatch);
    for (text, choice) in [
        ("auto", ArithmeticChoice::Auto),
        ("f32", ArithmeticChoice::F32),
        ("f16", ArithmeticChoice::F16),
    ] {
        let config = SIM.replacen(
            "frame_pool_mib = 64",
            &format!("frame_pool_mib = 64\n[runtime]\nprecision = \"{text}\"\nallow_precision_mismatch = true"),
            1,
        );
        let runtime = RunConfig::parse(&config, base).unwrap().runtime;
        assert_eq!(runtime.precision, choice);
        assert!(runtime.allow_precision_mismatch);
    }
}

#[test]
fn a_region_of_interest_that_wraps_or_leaves_the_frame_is_refused() {
    let roi = |x: u32, width: u32| format!("[roi]\nx = {x}\ny = 0\nwidth = {width}\nheight = 16\n\n[routing]");
    // x + width wraps to 1 in 32 bits: before, it passed the check and every part was fail-safed.
    let err = refusal("[routing]", &roi(u32::MAX, 2));
    assert!(err.contains("odd.toml") && err.contains("roi"), "{err}");
    // The conveyor's frames are 256 pixels wide.
    let err = refusal("[routing]", &roi(200, 100));
    assert!(err.contains("roi") && err.contains("256×256"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fine.toml"),
        SIM.replacen("[routing]", &roi(100, 100), 1),
    )
    .unwrap();
    RunConfig::load(&dir.path().join("fine.toml")).unwrap();
}

/// Seeded mutations of board/sim.toml through the parse-and-check path `ucad run` takes (the
/// fuzz target fuzz/fuzz_targets/run_config.rs searches further): an error or a config, never
/// a panic; and every config that passes gives durations and sizes the loop can use.
#[test]
fn mutated_configs_are_refused_or_usable_without_a_panic() {
    use rand::{Rng, SeedableRng};
    const MUTATIONS: usize = 5000;
    const ODD: [&str; 14] = [
        "inf",
        "-inf",
        "nan",
        "1e300",
        "1e22",
        "-1",
        "0",
        "0.0",
        "1e-300",
        "18446744073709551615",
        "4294967295",
        "9223372036854775807",
        "\"x\"",
        "[]",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
    let lines: Vec<&str> = SIM.lines().collect();
    let base = std::path::Path::new("/config");
    let mut accepted = 0;
    for _ in 0..MUTATIONS {
        let mut mutated: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..mutated.len());
            match rng.random_range(0..4) {
                0 => {
                    if let Some((key, _)) = mutated[at].split_once(" = ") {
                        mutated[at] = format!("{key} = {}", ODD[rng.random_range(0..ODD.len())]);
                    }
                }
                1 => {
                    mutated.remove(at);
                }
                2 => {
                    let copy = mutated[rng.random_range(0..mutated.len())].clone();
                    mutated.insert(at, copy);
                }
                _ => {
                    let mut bytes = mutated[at].clone().into_bytes();
                    if !bytes.is_empty() {
                        let i = rng.random_range(0..bytes.len());
                        bytes[i] = rng.random_range(b' '..=b'~');
                    }
                    mutated[at] = String::from_utf8(bytes).unwrap();
                }
            }
        }
        let Ok(config) = RunConfig::parse(&mutated.join("\n"), base) else {
            continue;
        };
        accepted += 1;
        let now = std::time::Instant::now();
        let _ = now + config.reject.travel_delay + config.reject.pulse_width + config.failsafe.stall;
        ucad::runtime::config::frame_period(config.source.fps()).unwrap();
        config.memory.frame_pool_bytes().unwrap();
        assert!(config.failsafe.deadline <= config.reject.travel_delay);
    }
    eprintln!("{accepted} of {MUTATIONS} mutated configs passed the checks");
    assert!(accepted > 0 && accepted < MUTATIONS);
}
