//! The exported graph against an independent reference forward, on the tiny random ViT.

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_core::prelude::Tensor;
use ucad::backbone::{export_to_file, Arch, Backbone, ExportOptions, Prompt, VitWeights};

use common::reference;

const ARCH: Arch = Arch::VitTinyTest;

fn random_vec(len: usize, seed: u64, range: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-range..range)).collect()
}

fn exported(
    blocks: Vec<usize>,
    prompt_len: usize,
    dir: &tempfile::TempDir,
) -> (VitWeights, ExportOptions, std::path::PathBuf) {
    let weights = VitWeights::random(ARCH, 7);
    let opts = ExportOptions {
        blocks,
        prompt_len,
        ..ExportOptions::defaults(ARCH)
    };
    let path = dir.path().join("tiny.onnx");
    export_to_file(&weights, &opts, &path).expect("export");
    (weights, opts, path)
}

fn image(seed: u64) -> Vec<f32> {
    let s = ARCH.spec().default_input_size;
    random_vec(3 * s * s, seed, 2.0)
}

fn image_tensor(images: &[&[f32]]) -> Tensor {
    let s = ARCH.spec().default_input_size;
    let data: Vec<f32> = images.iter().flat_map(|i| i.iter().copied()).collect();
    Tensor::from_shape(&[images.len(), 3, s, s], &data).expect("tensor")
}

fn assert_close(got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1e-6);
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= rel * scale, "max abs diff {worst} > {rel} · {scale}");
}

fn prompt_for(backbone: &Backbone, seed: u64) -> Prompt {
    let mut p = Prompt::zeros(&backbone.meta);
    p.data = random_vec(p.data.len(), seed, 1.0);
    p
}

#[test]
fn plain_and_prompted_match_the_reference_forward() {
    let dir = tempfile::tempdir().unwrap();
    for (blocks, len) in [(vec![1], 1), (vec![1, 3], 2)] {
        let (weights, opts, path) = exported(blocks.clone(), len, &dir);
        let backbone = Backbone::load(&path).unwrap();
        assert_eq!(backbone.meta.feature_dim(), 32 * blocks.len());
        let img = image(1);
        let plain = backbone.features(image_tensor(&[&img]), None).unwrap();
        let want = reference::forward(&weights, &ARCH.spec(), &img, opts.input_size, &blocks, None);
        assert_close(&plain, &want, 1e-4);

        let prompt = prompt_for(&backbone, 3);
        let prompted = backbone.features(image_tensor(&[&img]), Some(&prompt)).unwrap();
        let want = reference::forward(
            &weights,
            &ARCH.spec(),
            &img,
            opts.input_size,
            &blocks,
            Some((&prompt.data, len)),
        );
        assert_close(&prompted, &want, 1e-4);
        let moved = prompted
            .iter()
            .zip(&plain)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(moved > 1e-2, "the prompt must change the features (max change {moved})");
    }
}

#[test]
fn prompts_are_per_sample_with_no_batch_position_dependence() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, path) = exported(vec![3], 1, &dir);
    let single = Backbone::load(&path).unwrap();
    let batched = Backbone::load_batched(&path, 3).unwrap();
    let (a, b, c) = (image(10), image(11), image(12));
    let (pa, pc) = (prompt_for(&single, 20), prompt_for(&single, 21));
    let out = batched
        .run(image_tensor(&[&a, &b, &c]), &[Some(&pa), None, Some(&pc)])
        .unwrap();
    let out = out.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
    let per = out.len() / 3;
    let alone = [
        single.features(image_tensor(&[&a]), Some(&pa)).unwrap(),
        single.features(image_tensor(&[&b]), None).unwrap(),
        single.features(image_tensor(&[&c]), Some(&pc)).unwrap(),
    ];
    for (i, want) in alone.iter().enumerate() {
        assert_close(&out[i * per..(i + 1) * per], want, 1e-5);
    }
    // Swapping batch positions swaps the outputs, nothing else.
    let swapped = batched
        .run(image_tensor(&[&c, &b, &a]), &[Some(&pc), None, Some(&pa)])
        .unwrap();
    let swapped = swapped.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
    assert_close(&swapped[..per], &alone[2], 1e-5);
    assert_close(&swapped[2 * per..], &alone[0], 1e-5);
}

#[test]
fn int8_export_runs_and_stays_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let weights = VitWeights::random(ARCH, 7);
    let f32_path = dir.path().join("f32.onnx");
    let int8_path = dir.path().join("int8.onnx");
    let opts = ExportOptions {
        blocks: vec![3],
        ..ExportOptions::defaults(ARCH)
    };
    export_to_file(&weights, &opts, &f32_path).unwrap();
    let int8_opts = ExportOptions {
        quant: ucad::backbone::Quant::Int8,
        ..opts
    };
    export_to_file(&weights, &int8_opts, &int8_path).unwrap();
    let img = image(5);
    let a = Backbone::load(&f32_path)
        .unwrap()
        .features(image_tensor(&[&img]), None)
        .unwrap();
    let b = Backbone::load(&int8_path)
        .unwrap()
        .features(image_tensor(&[&img]), None)
        .unwrap();
    for (ta, tb) in a.chunks(32).zip(b.chunks(32)) {
        let cos = common::cosine(ta, tb);
        assert!(cos > 0.99, "int8 token cosine {cos}");
    }
    assert_ne!(a, b, "the int8 graph must really quantise");
}
