//! Every shipped board config parses and passes its checks; bad configs name the problem.

use ucad::runtime::config::{LineConfig, RunConfig, SourceConfig};

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

#[test]
fn a_missing_bank_makes_every_part_a_failsafe_reject() {
    // The loop without a bank must never pass a part: checked on a folder replay with the tiny
    // backbone, so that it runs without the default models.
    let dir = tempfile::tempdir().unwrap();
    let backbone = {
        use ucad::backbone::{export_to_file, Arch, ExportOptions, VitWeights};
        let path = dir.path().join("tiny.onnx");
        let options = ExportOptions {
            input_size: 64,
            ..ExportOptions::defaults(Arch::VitTinyTest)
        };
        export_to_file(&VitWeights::random(Arch::VitTinyTest, 1), &options, &path).unwrap();
        ucad::backbone::Backbone::load(&path).unwrap()
    };
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..3 {
        ucad::data::synthetic::textured_image(64, 64, i)
            .save(frames.join(format!("{i}.png")))
            .unwrap();
    }
    let mut config: RunConfig = toml::from_str(include_str!("../board/sim.toml")).unwrap();
    config.bank.path = dir.path().join("missing.ucad");
    config.source = SourceConfig::Folder {
        path: frames.clone(),
        fps: 50.0,
        repeat: false,
    };
    let mut source = ucad::runtime::source::folder(&frames, 50.0, false).unwrap();
    let mut inspector = ucad::runtime::inspection::Inspector::new(backbone, config);
    let outcome = inspector.run(&mut source, None).unwrap();
    assert_eq!(outcome.summary.frames, 3);
    assert_eq!(outcome.summary.failsafe_rejects, 3);
    assert!(outcome.parts.is_empty() || outcome.parts.iter().all(|p| p.rejected && p.failsafe));
}
