//! The bank file parser and the bank's validation: any bytes give a bank or an error, never a
//! panic. The bytes are read as a file, and as a body sealed into one (header and checksum), so
//! that they reach the decoder and the validation past the checksum; a bank that loads for the
//! tiny backbone judges a frame to a finite score.
#![no_main]

use std::sync::OnceLock;

use image::RgbImage;
use ucad::backbone::{export_to_file, Arch, Backbone, ExportOptions, Preprocessor, VitWeights};
use ucad::bank::format::seal;
use ucad::bank::Bank;
use ucad::data::synthetic::textured_image;
use ucad::detect::Detector;

/// The tiny backbone (as tests/common exports it) and a frame to judge.
fn tiny() -> &'static (Backbone, RgbImage) {
    static TINY: OnceLock<(Backbone, RgbImage)> = OnceLock::new();
    TINY.get_or_init(|| {
        let arch = Arch::VitTinyTest;
        let options = ExportOptions {
            input_size: 64,
            blocks: vec![2],
            ..ExportOptions::defaults(arch)
        };
        let path = std::env::temp_dir().join(format!("ucad-fuzz-tiny-{}.onnx", std::process::id()));
        export_to_file(&VitWeights::random(arch, 11), &options, &path).expect("export the tiny backbone");
        let backbone = Backbone::load(&path).expect("load the tiny backbone");
        let _ = std::fs::remove_file(&path);
        (backbone, textured_image(64, 64, 0))
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = Bank::from_bytes(data, "fuzz input");
    let Ok(bank) = Bank::from_bytes(&seal(data), "fuzz body") else {
        return;
    };
    let (backbone, frame) = tiny();
    if bank.check_backbone(&backbone.spec(), "fuzz body").is_err() {
        return;
    }
    let detector = Detector::new(&bank).expect("a bank that loads makes a detector");
    let tensor = Preprocessor::new(&backbone.meta).tensor(frame).expect("preprocess");
    let judgement = detector
        .judge_image(backbone, &tensor, None, &mut |_| {})
        .expect("a bank that loads judges");
    assert!(judgement.score.is_finite(), "score {}", judgement.score);
});
