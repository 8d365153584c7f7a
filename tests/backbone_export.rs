//! The exported graph against an independent reference forward, on the tiny random ViT.

mod common;

use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_core::prelude::Tensor;
use tract_onnx::pb::{tensor_proto::DataType, ModelProto};
use ucad::backbone::weights::Int8Weight;
use ucad::backbone::{export_to_file, Arch, Backbone, ExportOptions, Prompt, Quant, VitWeights};

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

/// The tiny ViT's weights, each Linear weight replaced by int8 codes (one scale per output row,
/// not the export's own rule) and their exact dequantisation.
fn with_int8_codes(seed: u64) -> VitWeights {
    let mut weights = VitWeights::random(ARCH, seed);
    let linear: Vec<String> = weights
        .params
        .keys()
        .filter(|n| {
            [
                "attn.qkv.weight",
                "attn.proj.weight",
                "mlp.fc1.weight",
                "mlp.fc2.weight",
            ]
            .iter()
            .any(|s| n.ends_with(s))
        })
        .cloned()
        .collect();
    for name in linear {
        let p = weights.params.get_mut(&name).unwrap();
        let cols = p.shape[1];
        let scales: Vec<f32> = p
            .data
            .chunks(cols)
            .map(|row| row.iter().fold(0f32, |m, v| m.max(v.abs())) / 120.0)
            .collect();
        let codes: Vec<i8> = p
            .data
            .iter()
            .enumerate()
            .map(|(i, v)| (v / scales[i / cols]).round() as i8)
            .collect();
        p.data = ucad::backbone::dequant::dequantize(&codes, &scales, cols);
        weights.int8.insert(name, Int8Weight { codes, scales });
    }
    weights
}

fn onnx(path: &std::path::Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

fn features(path: &std::path::Path, img: &[f32]) -> Vec<f32> {
    Backbone::load(path)
        .unwrap()
        .features(image_tensor(&[img]), None)
        .unwrap()
}

#[test]
fn int8_export_stores_int8_weights_and_stays_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let weights = VitWeights::random(ARCH, 7);
    let (f32_path, int8_path) = (dir.path().join("f32.onnx"), dir.path().join("int8.onnx"));
    let opts = ExportOptions {
        blocks: vec![3],
        ..ExportOptions::defaults(ARCH)
    };
    export_to_file(&weights, &opts, &f32_path).unwrap();
    let int8_opts = ExportOptions {
        quant: Quant::Int8,
        ..opts
    };
    export_to_file(&weights, &int8_opts, &int8_path).unwrap();
    let graph = onnx(&int8_path).graph.unwrap();
    let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    // q, k, v, proj, fc1, fc2 in each of blocks 0..=3; activations stay f32.
    assert_eq!(ops.iter().filter(|o| **o == "DequantizeLinear").count(), 6 * 4);
    assert!(!ops
        .iter()
        .any(|o| o.contains("Integer") || o.contains("DynamicQuantize")));
    let int8_values: usize = graph
        .initializer
        .iter()
        .filter(|t| t.data_type == DataType::Int8 as i32)
        .map(|t| t.raw_data.len())
        .sum();
    let linear_values: usize = (0..4)
        .map(|b| {
            ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
                .iter()
                .map(|l| weights.get(&format!("blocks.{b}.{l}.weight")).unwrap().data.len())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(
        int8_values, linear_values,
        "every Linear weight is stored as int8, one byte each"
    );
    let img = image(5);
    let (a, b) = (features(&f32_path, &img), features(&int8_path, &img));
    for (ta, tb) in a.chunks(32).zip(b.chunks(32)) {
        let cos = ucad::backbone::parity::cosine(ta, tb);
        assert!(cos > 0.999, "int8 token cosine {cos}");
    }
    assert_ne!(a, b, "the int8 file really holds quantised weights");
}

#[test]
fn int8_codes_that_came_with_the_weights_are_written_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let weights = with_int8_codes(3);
    // Through safetensors, as `models fetch` keeps them.
    let st = dir.path().join("w.safetensors");
    weights.save(ARCH, &st).unwrap();
    let weights = {
        let loaded = VitWeights::load_for(&st, ARCH).unwrap();
        assert_eq!(loaded.int8, weights.int8);
        loaded
    };
    let (f32_path, int8_path) = (dir.path().join("f32.onnx"), dir.path().join("int8.onnx"));
    export_to_file(&weights, &ExportOptions::defaults(ARCH), &f32_path).unwrap();
    let int8_opts = ExportOptions {
        quant: Quant::Int8,
        ..ExportOptions::defaults(ARCH)
    };
    export_to_file(&weights, &int8_opts, &int8_path).unwrap();

    let graph = onnx(&int8_path).graph.unwrap();
    let init = |name: &str| graph.initializer.iter().find(|t| t.name == name).unwrap();
    let d = ARCH.spec().embed_dim;
    let fc2 = &weights.int8["blocks.1.mlp.fc2.weight"];
    let hidden = ARCH.spec().mlp_hidden;
    // Stored [in, out]: code (i, o) is the weight's code (o, i).
    let codes = &init("blocks.1.mlp.fc2.weight_q").raw_data;
    for (i, o) in [(0, 0), (5, 1), (hidden - 1, d - 1)] {
        assert_eq!(codes[i * d + o] as i8, fc2.codes[o * hidden + i]);
    }
    let scales: Vec<f32> = init("blocks.1.mlp.fc2.weight_scale")
        .raw_data
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(scales, fc2.scales);
    // The k rows of the fused qkv: their own codes and scales.
    let k_scales = &init("blocks.0.attn.k.weight_scale").raw_data;
    let want: Vec<u8> = weights.int8["blocks.0.attn.qkv.weight"].scales[d..2 * d]
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    assert_eq!(k_scales, &want);

    let img = image(9);
    assert_eq!(
        features(&int8_path, &img),
        features(&f32_path, &img),
        "dequantised at load, the int8 file computes exactly what the f32 one does"
    );
}

#[test]
fn int8_codes_that_do_not_reproduce_the_f32_weight_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut weights = with_int8_codes(4);
    let q = weights.int8.get_mut("blocks.2.mlp.fc1.weight").unwrap();
    q.codes[17] = q.codes[17].wrapping_add(1);
    let st = dir.path().join("odd.safetensors");
    weights.save(ARCH, &st).unwrap();
    let err = format!("{:#}", VitWeights::load_for(&st, ARCH).unwrap_err());
    assert!(
        err.contains("odd.safetensors") && err.contains("blocks.2.mlp.fc1.weight") && err.contains("index 17"),
        "{err}"
    );
}

#[test]
fn a_pass_on_two_threads_computes_what_one_thread_does() {
    use tract_linalg::multithread::{
        multithread_tract_scope, set_threading_element_threshold, set_threading_panel_threshold,
    };
    // The tiny ViT's products are far below tract's thresholds for threading: thread them all.
    set_threading_panel_threshold(0);
    set_threading_element_threshold(0);
    let dir = tempfile::tempdir().unwrap();
    let (_, _, path) = exported(vec![3], 1, &dir);
    let backbone = Backbone::load(&path).unwrap();
    let img = image(2);
    let prompt = prompt_for(&backbone, 4);
    let one = backbone.features(image_tensor(&[&img]), Some(&prompt)).unwrap();
    let two = multithread_tract_scope(ucad::parallel::executor(2).unwrap(), || {
        backbone.features(image_tensor(&[&img]), Some(&prompt))
    })
    .unwrap();
    assert_close(&two, &one, 1e-6);
}
