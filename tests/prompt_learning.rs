//! A task fitted with a learned prompt (feature `train`): the prompt is stored in the bank,
//! survives the file, and inference scores the task's prompted features.

#![cfg(feature = "train")]

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::models_present;
use ucad::backbone::models::ModelCache;
use ucad::backbone::parity::cosine;
use ucad::backbone::{Prompt, Quant};
use ucad::data::synthetic::textured_image;
use ucad::train::{initial_prompt, PromptedVit};

use ucad::backbone::colour::image_colours;
use ucad::backbone::extract::extract_features;
use ucad::backbone::{export_to_file, Arch, Backbone, ExportOptions, Preprocessor, VitWeights};
use ucad::bank::Bank;
use ucad::data::folder::load_rgb;
use ucad::data::synthetic::products;
use ucad::detect::Detector;
use ucad::fit::FitParams;
use ucad::train::masks::MaskSource;
use ucad::train::prompted::PromptLearner;
use ucad::train::scl::SclLoss;
use ucad::train::{Prompting, Recipe};

#[test]
fn a_learned_prompt_is_stored_in_the_bank_and_used_at_inference() {
    let dir = tempfile::tempdir().unwrap();
    let weights_path = dir.path().join("tiny.safetensors");
    let weights = VitWeights::random(Arch::VitTinyTest, 4);
    weights.save(Arch::VitTinyTest, &weights_path).unwrap();
    let onnx = dir.path().join("tiny.onnx");
    export_to_file(&weights, &ExportOptions::defaults(Arch::VitTinyTest), &onnx).unwrap();
    let backbone = Backbone::load(&onnx).unwrap();

    let product = &products(1, 9)[0];
    let images: Vec<PathBuf> = (0..12)
        .map(|i| {
            let path = dir.path().join(format!("good_{i:02}.png"));
            product.normal(64, i).save(&path).unwrap();
            path
        })
        .collect();
    let prompting = Prompting {
        recipe: Recipe::new(2, SclLoss::Paper, 0.02, 0, 0),
        masks: MaskSource::Superpixel,
        weights: weights_path,
    };
    let learner = PromptLearner::new(&backbone, prompting).unwrap();
    let plain = extract_features(&backbone, &images, "plain").unwrap();
    let params = FitParams {
        key_rows: 16,
        knowledge_dims: 0,
        ..FitParams::default()
    };
    let colours = image_colours(&backbone.meta, &images, |p| load_rgb(p)).unwrap();
    let fit = learner
        .fit(&backbone, "widget", &images, (&plain, &colours), &params)
        .unwrap();
    assert_eq!(fit.trained.epochs.len(), 2);
    // The prompt's bytes come out of the task's budget.
    let tight = FitParams {
        task_budget_bytes: fit.task.bytes() - 1,
        knowledge_fraction: 1.0,
        ..params.clone()
    };
    let budgeted = learner
        .fit(&backbone, "widget", &images, (&plain, &colours), &tight)
        .unwrap();
    assert!(
        budgeted.task.bytes() <= tight.task_budget_bytes,
        "{}",
        budgeted.task.bytes()
    );

    let mut bank = Bank::new(
        &backbone.file_sha256,
        backbone.meta.feature_dim(),
        backbone.meta.patches(),
    );
    bank.append(fit.task).unwrap();
    let path = dir.path().join("bank.ucad");
    bank.save(&path).unwrap();
    let loaded = Bank::load(&path).unwrap();
    let stored = loaded.tasks[0].prompt.as_ref().expect("the prompt is stored");
    assert_eq!(stored.rows.to_f32(), fit.trained.prompt.data);

    let detector = Detector::new(&loaded).unwrap();
    assert!(detector.tasks()[0].prompted());
    let image = Preprocessor::new(&backbone.meta)
        .tensor(&product.normal(64, 40))
        .unwrap();
    let plain_features = backbone.features(image.clone(), None).unwrap();
    let scored = detector.task_features(&backbone, &image, &plain_features, 0).unwrap();
    let prompted = backbone.features(image.clone(), Some(&fit.trained.prompt)).unwrap();
    assert_eq!(&scored[..], &prompted[..]);
    assert_ne!(&scored[..], &plain_features[..]);
    let judgement = detector.judge_image(&backbone, &image, None, &mut |_| {}).unwrap();
    assert_eq!(
        judgement.patch_scores,
        detector.tasks()[0].patch_scores(&prompted).unwrap()
    );
}

/// Prompt learning trains through candle; the device runs the exported graph under tract. For the
/// default backbone's weights and a prompt, both must give the same features (fp32).
#[test]
fn candle_and_the_exported_clip_graph_give_the_same_prompted_features() {
    let cache = ModelCache::locate();
    let arch = Arch::VitB16Clip;
    if !models_present(&cache, arch) {
        return;
    }
    let backbone = Backbone::load(&cache.backbone(arch, Quant::F32)).unwrap();
    let weights = VitWeights::load_for(&cache.weights(arch), arch).unwrap();
    let vit = PromptedVit::new(&weights, &backbone.meta, DType::F32).unwrap();
    let prompt_tensor = initial_prompt(&vit, 3).unwrap();
    let prompt = Prompt {
        blocks: backbone.meta.prompt_blocks,
        len: backbone.meta.prompt_len,
        dim: backbone.meta.embed_dim,
        data: prompt_tensor.flatten_all().unwrap().to_vec1().unwrap(),
    };
    let image = Preprocessor::new(&backbone.meta)
        .tensor(&textured_image(300, 260, 5))
        .unwrap();
    let tract_features = backbone.features(image.clone(), Some(&prompt)).unwrap();
    let s = backbone.meta.input_size;
    let pixels = image.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
    let input = Tensor::from_vec(pixels, (1, 3, s, s), &Device::Cpu).unwrap();
    let candle_features: Vec<f32> = vit
        .forward_shared(&input, &prompt_tensor)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let f = backbone.meta.feature_dim();
    let min = tract_features
        .chunks(f)
        .zip(candle_features.chunks(f))
        .map(|(a, b)| cosine(a, b))
        .fold(1.0f32, f32::min);
    println!("candle vs tract, CLIP ViT-B/16 block 5 under a U(-1, 1) prompt: min per-token cosine {min:.7}");
    assert!(min >= 0.9999, "min per-token cosine {min}");
}
