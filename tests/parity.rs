//! Our exports against the original pretrained graphs. Needs `ucad models fetch` (CI runs it and
//! sets UCAD_REQUIRE_MODELS=1, so that a missing model fails instead of skipping).

mod common;

use common::models_present;
use ucad::backbone::models::ModelCache;
use ucad::backbone::parity::check_parity;
use ucad::backbone::Arch;

#[test]
fn dinov2_export_reproduces_the_pretrained_hidden_states() {
    let cache = ModelCache::locate();
    if !models_present(&cache, Arch::VitS14Dinov2) {
        return;
    }
    // Block 5 is UCAD's feature block; block 11 covers the whole stack. The original resizes its
    // 37×37 position grid at run time; ours is resampled at export: this checks that too.
    let report = check_parity(&cache, Arch::VitS14Dinov2, &[5, 11]).unwrap();
    assert!(report.min_cosine >= 0.9999, "{report:?}");
}

#[test]
fn clip_int8_export_reproduces_the_pretrained_hidden_states() {
    let cache = ModelCache::locate();
    if !models_present(&cache, Arch::VitB16Clip) {
        return;
    }
    // The original CLIP graph quantises activations per tensor at run time (uint8), so a one-ulp
    // float difference upstream can flip a quantisation step; the arithmetic is identical
    // through block 2 and drifts after it (block 5: min cosine ≈ 0.996, see the issue note).
    let report = check_parity(&cache, Arch::VitB16Clip, &[1, 2]).unwrap();
    assert!(report.min_cosine >= 0.9999, "{report:?}");
    for block in &report.blocks {
        assert!(
            block.f32.mean_cosine > 0.99,
            "f32 export far from the int8 original: {block:?}"
        );
    }
}
