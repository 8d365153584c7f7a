//! Learning one task from normal images only: key and knowledge coresets, and a threshold
//! calibrated on held-out normal training images for a target false-reject rate.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use indicatif::{ProgressBar, ProgressStyle};
use log::info;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::TaskIndex;
use crate::backbone::{Backbone, Preprocessor};
use crate::bank::coreset::{gather_rows, greedy_coreset};
use crate::bank::{NormalStats, Precision, Rows, Task};
use crate::data::folder::load_rgb;

#[derive(Debug, Clone)]
pub struct FitParams {
    /// Rows in the routing key (UCAD: 196).
    pub key_rows: usize,
    /// Rows in the knowledge coreset (UCAD: 196).
    pub knowledge_rows: usize,
    pub k: usize,
    /// Fraction of the normal training images held out to calibrate the threshold.
    pub holdout: f32,
    pub target_false_reject: f32,
    pub precision: Precision,
    pub seed: u64,
}

impl Default for FitParams {
    fn default() -> FitParams {
        FitParams {
            key_rows: 196,
            knowledge_rows: 196,
            k: 1,
            holdout: 0.2,
            target_false_reject: 0.01,
            precision: Precision::F32,
            seed: 0,
        }
    }
}

/// Plain patch features of each image, with a progress bar.
pub fn extract_features(backbone: &Backbone, images: &[PathBuf], label: &str) -> Result<Vec<Vec<f32>>> {
    let mut pre = Preprocessor::new(&backbone.meta);
    let bar = ProgressBar::new(images.len() as u64).with_message(label.to_string());
    bar.set_style(ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed}<{eta}]").expect("template"));
    let features = images
        .iter()
        .map(|p| {
            bar.inc(1);
            backbone.features(pre.tensor(&load_rgb(p)?)?, None)
        })
        .collect::<Result<_>>();
    bar.finish_and_clear();
    features
}

/// Splits the images into (memory, held-out), deterministically for the seed.
fn split(images: &[PathBuf], holdout: f32, seed: u64) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    ensure!((0.0..1.0).contains(&holdout), "holdout fraction must be in [0, 1)");
    let mut shuffled = images.to_vec();
    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let held = ((images.len() as f32 * holdout).round() as usize).max(1);
    ensure!(
        images.len() > held,
        "{} training images are too few: at least 2 are needed (one is held out)",
        images.len()
    );
    let memory = shuffled.split_off(held);
    Ok((memory, shuffled))
}

pub fn fit_task(backbone: &Backbone, name: &str, images: &[PathBuf], params: &FitParams) -> Result<Task> {
    ensure!(
        params.k >= 1 && params.key_rows >= 1 && params.knowledge_rows >= 1,
        "k and row counts must be ≥ 1"
    );
    let (memory_images, held_images) = split(images, params.holdout, params.seed)?;
    let dim = backbone.meta.feature_dim();
    let memory: Vec<f32> = extract_features(backbone, &memory_images, &format!("{name}: features"))?.concat();
    let key = gather_rows(
        &memory,
        dim,
        &greedy_coreset(&memory, dim, params.key_rows, params.seed),
    );
    let knowledge = gather_rows(
        &memory,
        dim,
        &greedy_coreset(&memory, dim, params.knowledge_rows, params.seed + 1),
    );
    let mut task = Task {
        name: name.to_string(),
        key: Rows::new(dim, key, params.precision),
        prompt: None,
        knowledge: Rows::new(dim, knowledge, params.precision),
        k: 0,
        threshold: f32::INFINITY,
        normal: NormalStats {
            count: 0,
            mean: 0.0,
            std: 0.0,
            max: 0.0,
            target_false_reject: params.target_false_reject,
        },
    };
    task.k = params.k.min(task.knowledge.len()) as u32;
    let index = TaskIndex::new(&task);
    let held = extract_features(backbone, &held_images, &format!("{name}: calibration"))?;
    let scores: Vec<f32> = held
        .iter()
        .map(|f| index.patch_scores(f).into_iter().fold(f32::NEG_INFINITY, f32::max))
        .collect();
    task.normal = normal_stats(&scores, params.target_false_reject);
    task.threshold = threshold_for(&scores, params.target_false_reject);
    info!(
        "{name}: {} memory / {} held-out images, {} key and {} knowledge rows, threshold {:.4}",
        memory_images.len(),
        held_images.len(),
        task.key.len(),
        task.knowledge.len(),
        task.threshold
    );
    Ok(task)
}

fn normal_stats(scores: &[f32], target_false_reject: f32) -> NormalStats {
    let n = scores.len() as f32;
    let mean = scores.iter().sum::<f32>() / n;
    let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / n).sqrt();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    NormalStats {
        count: scores.len() as u32,
        mean,
        std,
        max,
        target_false_reject,
    }
}

/// The (1 − rate) quantile of the held-out normal scores, linearly interpolated; with few
/// held-out images this is their maximum, i.e. no held-out normal image is rejected.
pub fn threshold_for(scores: &[f32], target_false_reject: f32) -> f32 {
    let mut sorted = scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    let pos = (1.0 - target_false_reject.clamp(0.0, 1.0)) * (sorted.len() - 1) as f32;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_the_interpolated_quantile() {
        let scores: Vec<f32> = (0..101).map(|i| i as f32).collect();
        assert_eq!(threshold_for(&scores, 0.01), 99.0);
        assert_eq!(threshold_for(&scores, 0.0), 100.0);
        assert_eq!(threshold_for(&[3.0, 1.0, 2.0], 0.01), 2.98);
    }
}
