//! Learning one task from normal images only: key and knowledge coresets, and a threshold
//! calibrated on held-out normal training images for a target false-reject rate.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use image::RgbImage;
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

/// Plain patch features of each image file, on every core, with a progress bar.
pub fn extract_features(backbone: &Backbone, images: &[PathBuf], label: &str) -> Result<Vec<Vec<f32>>> {
    extract_features_with(backbone, images, label, |p| load_rgb(p))
}

/// Plain patch features of each item as `load` turns it into an image, on every core (one tract
/// plan, one preprocessor per worker), with a progress bar. Order follows `images`.
pub fn extract_features_with<T: Sync>(
    backbone: &Backbone,
    images: &[T],
    label: &str,
    load: impl Fn(&T) -> Result<RgbImage> + Sync,
) -> Result<Vec<Vec<f32>>> {
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
                let (bar, load) = (bar.clone(), &load);
                scope.spawn(move || -> Result<Vec<Vec<f32>>> {
                    let mut pre = Preprocessor::new(&backbone.meta);
                    part.iter()
                        .map(|p| {
                            bar.inc(1);
                            backbone.features(pre.tensor(&load(p)?)?, None)
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

/// The threshold for a target false-reject rate from held-out normal scores: their empirical
/// (1 − rate) quantile when there are at least 1/rate of them. With fewer, that quantile is at
/// most their maximum, which a new normal part exceeds far more often than `rate`; then the
/// larger of it and the same quantile of a Gumbel distribution fitted to the scores (moments)
/// is used: an image score is a maximum over patches, and maxima have Gumbel-like right tails.
pub fn threshold_for(scores: &[f32], target_false_reject: f32) -> f32 {
    let rate = target_false_reject.clamp(1e-6, 0.5);
    let empirical = empirical_quantile(scores, 1.0 - rate);
    if scores.len() as f32 * rate >= 1.0 {
        return empirical;
    }
    let stats = normal_stats(scores, rate);
    empirical.max(gumbel_quantile(stats.mean as f64, stats.std as f64, 1.0 - rate as f64) as f32)
}

/// Quantile `p` of the Gumbel (maximum) distribution with the given mean and standard deviation.
fn gumbel_quantile(mean: f64, std: f64, p: f64) -> f64 {
    const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;
    let scale = std * 6f64.sqrt() / std::f64::consts::PI;
    let location = mean - EULER_GAMMA * scale;
    location - scale * (-p.ln()).ln()
}

/// Linearly interpolated quantile `q` of `scores`.
fn empirical_quantile(scores: &[f32], q: f32) -> f32 {
    let mut sorted = scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f32;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_interpolated_and_the_gumbel_quantile_is_right() {
        let scores: Vec<f32> = (0..101).map(|i| i as f32).collect();
        assert_eq!(empirical_quantile(&scores, 0.99), 99.0);
        assert_eq!(empirical_quantile(&[3.0, 1.0, 2.0], 0.99), 2.98);
        // Standard Gumbel (location 0, scale 1): mean γ, std π/√6; its median is −ln ln 2.
        let (mean, std) = (0.577_215_664_901_532_9, std::f64::consts::PI / 6f64.sqrt());
        assert!((gumbel_quantile(mean, std, 0.5) + 2f64.ln().ln()).abs() < 1e-12);
        assert!((gumbel_quantile(mean, std, 0.99) - 4.600_149_226).abs() < 1e-8);
    }

    #[test]
    fn few_held_out_scores_get_a_fitted_tail_beyond_their_maximum() {
        // Five scores: the empirical 0.99 quantile is nearly their max (2.98); the tail goes beyond.
        let few = [1.0, 1.5, 2.0, 2.5, 3.0];
        let t = threshold_for(&few, 0.01);
        let std = (few.iter().map(|s| (s - 2.0f32).powi(2)).sum::<f32>() / 5.0).sqrt();
        assert!(
            (t - gumbel_quantile(2.0, std as f64, 0.99) as f32).abs() < 1e-5 && t > 3.0,
            "{t}"
        );
        // Enough scores to see the quantile: the empirical one governs.
        let many: Vec<f32> = (0..1001).map(|i| i as f32 / 1000.0).collect();
        let t = threshold_for(&many, 0.01);
        assert!((t - 0.99).abs() < 1e-6, "{t}");
    }
}
