//! A task's limits from its held-out normal images: the reject threshold for a target
//! false-reject rate, and the statistics routing and the unknown-product rule use.

use anyhow::Result;

use crate::backbone::colour::Colour;
use crate::bank::colour::ColourStats;
use crate::bank::{ImageStats, NormalStats, RoutingStats, Task};
use crate::detect::{image_score, TaskIndex};

/// Sets the threshold and the routing statistics from held-out normal images' features, and the
/// colour statistics from all the task's images (nothing is fitted to their colours).
pub(super) fn calibrate(
    task: &mut Task,
    held_plain: &[&[f32]],
    held_knowledge: &[&[f32]],
    colours: &[Colour],
    image: ImageStats,
    target_false_reject: f32,
) -> Result<()> {
    task.routing.image = image;
    let index = TaskIndex::new(task)?;
    let patch_scores: Vec<Vec<f32>> = held_knowledge
        .iter()
        .map(|f| index.patch_scores(f))
        .collect::<Result<_>>()?;
    let scores: Vec<f32> = patch_scores.iter().map(|p| image_score(p)).collect();
    task.normal = normal_stats(&scores, target_false_reject);
    task.threshold = threshold_for(&scores, target_false_reject);
    let distances: Vec<f32> = held_plain
        .iter()
        .map(|f| index.key_distance(f))
        .collect::<Result<_>>()?;
    let stats = normal_stats(&distances, 0.0);
    task.routing = RoutingStats {
        count: stats.count,
        mean: stats.mean,
        // A floor for identical held-out images (a generated product, a static scene).
        std: stats.std.max(1e-3 * stats.mean.abs()).max(f32::MIN_POSITIVE),
        unknown_above: UNKNOWN_SIGMAS,
        patch_limit: empirical_quantile(&patch_scores.concat(), UNLIKE_QUANTILE),
        colour: ColourStats::fit(colours),
        image: task.routing.image.clone(),
    };
    Ok(())
}

/// The unknown-product rule's two limits: a normalised routing distance beyond this many
/// standard deviations, and a patch unlike the normal ones above this quantile of their patch
/// scores (chosen on validation runs, docs/LIMITS.md).
const UNKNOWN_SIGMAS: f32 = 15.0;
const UNLIKE_QUANTILE: f32 = 0.995;

pub(super) fn normal_stats(scores: &[f32], target_false_reject: f32) -> NormalStats {
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
pub(crate) fn threshold_for(scores: &[f32], target_false_reject: f32) -> f32 {
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
pub(super) fn empirical_quantile(scores: &[f32], q: f32) -> f32 {
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
