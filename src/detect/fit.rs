//! Learning one task from normal images only: key and knowledge coresets, and a threshold
//! calibrated on held-out normal training images for a target false-reject rate.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use indicatif::{ProgressBar, ProgressStyle};
use log::info;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{image_score, TaskIndex};
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

/// Plain patch features of each image, on every core (one tract plan, one preprocessor per
/// worker), with a progress bar. Order follows `images`.
pub fn extract_features(backbone: &Backbone, images: &[PathBuf], label: &str) -> Result<Vec<Vec<f32>>> {
    let bar = ProgressBar::new(images.len() as u64).with_message(label.to_string());
    bar.set_style(ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed}<{eta}]").expect("template"));
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(images.len().max(1));
    let chunk = images.len().div_ceil(workers).max(1);
    let features = std::thread::scope(|scope| {
        let handles: Vec<_> = images
            .chunks(chunk)
            .map(|part| {
                let bar = bar.clone();
                scope.spawn(move || -> Result<Vec<Vec<f32>>> {
                    let mut pre = Preprocessor::new(&backbone.meta);
                    part.iter()
                        .map(|p| {
                            bar.inc(1);
                            backbone.features(pre.tensor(&load_rgb(p)?)?, None)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("feature worker panicked"))
            .collect::<Result<Vec<_>>>()
    });
    bar.finish_and_clear();
    Ok(features?.concat())
}

/// Splits image indices into (memory, held-out), deterministically for the seed.
fn split(count: usize, holdout: f32, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    ensure!((0.0..1.0).contains(&holdout), "holdout fraction must be in [0, 1)");
    let mut shuffled: Vec<usize> = (0..count).collect();
    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let held = ((count as f32 * holdout).round() as usize).max(1);
    ensure!(
        count > held,
        "{count} training images are too few: at least 2 are needed (one is held out)"
    );
    let memory = shuffled.split_off(held);
    Ok((memory, shuffled))
}

/// Learns a task from the normal images in `images`.
pub fn fit_task(backbone: &Backbone, name: &str, images: &[PathBuf], params: &FitParams) -> Result<Task> {
    let features = extract_features(backbone, images, &format!("{name}: features"))?;
    fit_from_features(name, &features, backbone.meta.feature_dim(), params)
}

/// Learns a task from the plain features of its normal training images (one row-major [N, F]
/// vector per image, rows of `dim`).
pub fn fit_from_features(name: &str, features: &[Vec<f32>], dim: usize, params: &FitParams) -> Result<Task> {
    ensure!(
        params.k >= 1 && params.key_rows >= 1 && params.knowledge_rows >= 1,
        "k and row counts must be ≥ 1"
    );
    let (memory_ids, held_ids) = split(features.len(), params.holdout, params.seed)?;
    ensure!(
        features.iter().all(|f| !f.is_empty() && f.len() % dim == 0),
        "features are not rows of {dim}"
    );
    let memory: Vec<f32> = memory_ids.iter().flat_map(|&i| features[i].iter().copied()).collect();
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
    let scores: Vec<f32> = held_ids
        .iter()
        .map(|&i| image_score(&index.patch_scores(&features[i])))
        .collect();
    task.normal = normal_stats(&scores, params.target_false_reject);
    task.threshold = threshold_for(&scores, params.target_false_reject);
    info!(
        "{name}: {} memory / {} held-out images, {} key and {} knowledge rows, threshold {:.4}",
        memory_ids.len(),
        held_ids.len(),
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
