//! Offline prompt learning (cargo feature `train`): a task's prefix prompt trained with
//! structure-based contrastive learning on its normal training images, selected on held-out
//! normal images by the same loss.

pub mod masks;
pub mod prompted;
pub mod sam;
pub mod scl;
pub mod vit;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use log::info;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backbone::{Preprocessor, Prompt};
use crate::data::folder::load_rgb;
use masks::{MaskSource, Segmenter};
use scl::SclLoss;
pub use vit::PromptedVit;

/// The segment sources' factory (here, so that a source's file needs no other's).
impl MaskSource {
    pub(crate) fn segmenter(&self) -> Result<Box<dyn Segmenter>> {
        Ok(match self {
            MaskSource::Superpixel => Box::new(masks::Superpixels::default()),
            MaskSource::Sam(weights) => Box::new(sam::SamSegmenter::load(weights)?),
            MaskSource::Folder(dir) => {
                ensure!(dir.is_dir(), "mask folder {} does not exist", dir.display());
                Box::new(masks::LabelMapFolder { dir: dir.clone() })
            }
        })
    }
}

/// How a prompt is trained: the paper's optimiser (Adam, gradient-norm clip 1, batch 8, init
/// U(−1, 1)), a fixed number of epochs, and the epoch kept chosen by the loss on the held-out
/// normal images. The paper's lr of 5e-4 over 25 epochs of all images (about 650 steps for
/// 209 images) lets Adam move each value by up to about 0.33; a CPU budget of tens of steps
/// needs a larger lr for the same travel.
#[derive(Debug, Clone, Serialize)]
pub struct Recipe {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub clip: f64,
    pub loss: SclLoss,
    /// Most memory images a prompt trains on (0: all), and twice the most held-out images its
    /// epoch is chosen on: seeded subsets keep CPU training short.
    pub images: usize,
    pub seed: u64,
}

impl Recipe {
    pub fn new(epochs: usize, loss: SclLoss, lr: f64, images: usize, seed: u64) -> Recipe {
        Recipe {
            epochs,
            batch: 8,
            lr,
            clip: 1.0,
            loss,
            images,
            seed,
        }
    }
}

/// What prompting a task needs besides its images.
pub struct Prompting {
    pub recipe: Recipe,
    pub masks: MaskSource,
    /// The timm-layout weights the backbone was exported from.
    pub weights: PathBuf,
}

/// A training image: normalised [3, S, S] and one segment label per patch.
pub struct Sample {
    pub image: Tensor,
    pub labels: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochLoss {
    pub train: f64,
    pub held: f64,
}

/// A learned prompt and how it was learned.
#[derive(Debug, Clone, Serialize)]
pub struct Trained {
    #[serde(skip)]
    pub prompt: Prompt,
    /// Loss on the held-out images with the initial prompt (epoch 0).
    pub initial_held: f64,
    pub epochs: Vec<EpochLoss>,
    /// 1-based epoch whose prompt is kept (lowest held-out loss).
    pub best_epoch: usize,
    pub train_images: usize,
    pub held_images: usize,
    pub seconds: f64,
}

impl Trained {
    /// The held-out loss of the kept prompt.
    pub(crate) fn best_held(&self) -> f64 {
        self.epochs[self.best_epoch - 1].held
    }
}

/// Images and their segment labels, on every core.
pub(crate) fn samples(vit: &PromptedVit, segmenter: &dyn Segmenter, images: &[PathBuf]) -> Result<Vec<Sample>> {
    crate::parallel::map(
        images,
        || Preprocessor::new(vit.meta()),
        |pre, path| sample(vit, pre, segmenter, path, &load_rgb(path)?),
    )
}

/// The training sample of image `rgb`, read from `path`.
pub fn sample(
    vit: &PromptedVit,
    pre: &mut Preprocessor,
    segmenter: &dyn Segmenter,
    path: &Path,
    rgb: &RgbImage,
) -> Result<Sample> {
    let meta = vit.meta();
    let view = pre.network_view(rgb)?;
    let labels = segmenter.segment(path, &view, pre)?.to_patches(meta.grid());
    let input = pre.tensor(rgb)?;
    let data = input.try_as_plain_ram()?.as_slice::<f32>()?;
    let size = meta.input_size;
    let image = Tensor::from_slice(data, (3, size, size), &Device::Cpu)?.to_dtype(vit.dtype())?;
    Ok(Sample { image, labels })
}

/// The initial prompt, U(−1, 1), the same for every task of a seed.
pub fn initial_prompt(vit: &PromptedVit, seed: u64) -> Result<Tensor> {
    let meta = vit.meta();
    let dims = (meta.prompt_blocks, 2, meta.prompt_len, meta.embed_dim);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..dims.0 * 2 * dims.2 * dims.3)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Ok(Tensor::from_vec(values, dims, &Device::Cpu)?.to_dtype(vit.dtype())?)
}

/// The loss of one batch of `samples` under `prompt`.
pub(crate) fn batch_loss(vit: &PromptedVit, loss: SclLoss, samples: &[&Sample], prompt: &Tensor) -> Result<Tensor> {
    let images: Vec<&Tensor> = samples.iter().map(|s| &s.image).collect();
    let labels: Vec<u32> = samples.iter().flat_map(|s| s.labels.iter().copied()).collect();
    let features = vit.forward_shared(&Tensor::stack(&images, 0)?, prompt)?;
    loss.loss(&features, &labels)
}

fn mean_loss(vit: &PromptedVit, recipe: &Recipe, samples: &[Sample], prompt: &Tensor) -> Result<f64> {
    let mut total = 0.0;
    for chunk in samples.chunks(recipe.batch) {
        let refs: Vec<&Sample> = chunk.iter().collect();
        let loss = batch_loss(vit, recipe.loss, &refs, prompt)?;
        total += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * chunk.len() as f64;
    }
    Ok(total / samples.len() as f64)
}

/// Trains a prompt on `train`, keeping the epoch with the lowest loss on `held`.
pub(crate) fn train_prompt(vit: &PromptedVit, train: &[Sample], held: &[Sample], recipe: &Recipe) -> Result<Trained> {
    ensure!(
        !train.is_empty() && !held.is_empty(),
        "prompt learning needs training and held-out images"
    );
    ensure!(
        recipe.epochs >= 1 && recipe.batch >= 1,
        "prompt learning needs at least one epoch and batch"
    );
    let start = Instant::now();
    let var = Var::from_tensor(&initial_prompt(vit, recipe.seed)?)?;
    let params = ParamsAdamW {
        lr: recipe.lr,
        weight_decay: 0.0,
        ..ParamsAdamW::default()
    };
    let mut adam = AdamW::new(vec![var.clone()], params)?;
    let mut rng = ChaCha8Rng::seed_from_u64(recipe.seed.wrapping_add(1));
    let initial_held = mean_loss(vit, recipe, held, &var.as_tensor().detach())?;
    let mut best: Option<(f64, usize, Tensor)> = None;
    let mut epochs = Vec::new();
    let bar = ProgressBar::new((recipe.epochs * train.len().div_ceil(recipe.batch)) as u64);
    bar.set_style(
        ProgressStyle::with_template("prompt {bar:30} {pos}/{len} steps [{elapsed}<{eta}] {msg}").expect("template"),
    );
    for epoch in 1..=recipe.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        let mut total = 0.0;
        for chunk in order.chunks(recipe.batch) {
            let batch: Vec<&Sample> = chunk.iter().map(|&i| &train[i]).collect();
            let loss = batch_loss(vit, recipe.loss, &batch, var.as_tensor())?;
            total += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * chunk.len() as f64;
            let mut grads = loss.backward()?;
            let grad = grads.get(&var).context("the prompt got no gradient")?.clone();
            let norm = grad.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.sqrt();
            if norm > recipe.clip {
                grads.insert(&var, (grad * (recipe.clip / norm))?);
            }
            adam.step(&grads)?;
            bar.inc(1);
        }
        let held_loss = mean_loss(vit, recipe, held, &var.as_tensor().detach())?;
        let record = EpochLoss {
            train: total / train.len() as f64,
            held: held_loss,
        };
        bar.set_message(format!("held-out loss {held_loss:.4}"));
        info!(
            "epoch {epoch}: train loss {:.4}, held-out loss {:.4}",
            record.train, record.held
        );
        if best.as_ref().is_none_or(|(lowest, _, _)| held_loss < *lowest) {
            best = Some((held_loss, epoch, var.as_tensor().copy()?));
        }
        epochs.push(record);
    }
    bar.finish_and_clear();
    let (_, best_epoch, kept) = best.expect("at least one epoch ran");
    let meta = vit.meta();
    let prompt = Prompt {
        blocks: meta.prompt_blocks,
        len: meta.prompt_len,
        dim: meta.embed_dim,
        data: kept.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
    };
    Ok(Trained {
        prompt,
        initial_held,
        epochs,
        best_epoch,
        train_images: train.len(),
        held_images: held.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Learns a task's prompt from its memory images, selected on its held-out images (seeded
/// subsets of both when the recipe caps them).
pub(crate) fn learn_prompt(
    vit: &PromptedVit,
    segmenter: &dyn Segmenter,
    memory: &[PathBuf],
    held: &[PathBuf],
    recipe: &Recipe,
) -> Result<Trained> {
    let subset = |images: &[PathBuf], cap: usize, salt: u64| -> Vec<PathBuf> {
        let mut images = images.to_vec();
        if recipe.images > 0 && images.len() > cap {
            images.shuffle(&mut ChaCha8Rng::seed_from_u64(recipe.seed.wrapping_add(salt)));
            images.truncate(cap);
        }
        images
    };
    let train = samples(vit, segmenter, &subset(memory, recipe.images, 2))?;
    let held = samples(vit, segmenter, &subset(held, recipe.images.div_ceil(2), 3))?;
    train_prompt(vit, &train, &held, recipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::products;
    use masks::Superpixels;

    #[test]
    fn training_lowers_the_loss_on_a_synthetic_product() {
        let (weights, backbone) = crate::backbone::testing::tiny_backbone(5);
        let vit = PromptedVit::new(&weights, &backbone.meta, DType::F32).unwrap();
        let product = &products(1, 3)[0];
        let mut pre = Preprocessor::new(&backbone.meta);
        let segmenter = Superpixels {
            segments: 4,
            compactness: 10,
        };
        let mut make = |range: std::ops::Range<usize>| -> Vec<Sample> {
            range
                .map(|i| {
                    sample(
                        &vit,
                        &mut pre,
                        &segmenter,
                        Path::new("part.png"),
                        &product.normal(64, i),
                    )
                    .unwrap()
                })
                .collect()
        };
        let (train, held) = (make(0..16), make(16..20));
        for loss in [SclLoss::Paper, SclLoss::SupCon] {
            let recipe = Recipe::new(6, loss, 2e-2, 0, 1);
            let trained = train_prompt(&vit, &train, &held, &recipe).unwrap();
            let (first, last) = (&trained.epochs[0], &trained.epochs[5]);
            assert!(last.train < first.train, "{loss:?}: {:?}", trained.epochs);
            let best = trained.epochs[trained.best_epoch - 1].held;
            assert!(
                best < trained.initial_held,
                "{loss:?}: {} → {:?}",
                trained.initial_held,
                trained.epochs
            );
            assert_eq!(trained.prompt.data.len(), 4 * 2 * 32);
        }
    }
}
