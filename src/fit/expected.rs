//! What a fitted task's threshold is expected to do on the line, estimated before any defective
//! part was seen: false rejects at the rate the threshold was calibrated for, and escapes from
//! the task's held-out normal images with defects drawn onto them (data/defects.rs). It holds
//! for defects like the drawn ones; subtler real defects escape more often.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{split, FitParams};
use crate::backbone::extract::extract_features_with;
use crate::backbone::{Backbone, Preprocessor};
use crate::bank::Task;
use crate::data::defects::{draw_defect, DRAWN_DEFECTS, MIN_SIDE};
use crate::data::folder::load_rgb;
use crate::detect::{image_score, TaskIndex};

/// Most drawn defects per task, as many backbone passes: a rate from 48 draws is within about
/// ±14 points (95 %) at worst, per kind (16 draws) about ±24.
pub(crate) const MAX_DRAWN: usize = 48;

#[derive(Debug, Clone)]
pub struct Expected {
    /// The false-reject rate the threshold was calibrated for.
    pub false_reject: f64,
    /// Share of all drawn defects that pass the threshold.
    pub escape: f64,
    /// (passed, drawn) per kind: scratch, stain, moved patch.
    per_kind: [(usize, usize); 3],
    /// The threshold, the image scores of the held-out normal images it was calibrated on, and
    /// those of the drawn defects.
    pub threshold: f32,
    pub normal_scores: Vec<f32>,
    pub defect_scores: Vec<f32>,
}

impl Expected {
    /// Where the threshold sits among the held-out normal scores.
    pub fn placement(&self) -> String {
        let scores = &self.normal_scores;
        let below = scores.iter().filter(|s| **s <= self.threshold).count();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mean = scores.iter().sum::<f32>() / scores.len().max(1) as f32;
        format!(
            "threshold {:.4} is above {below} of the {} held-out normal scores (mean {mean:.4}, highest {max:.4}: \
             the threshold is {:.4} {})",
            self.threshold,
            scores.len(),
            (self.threshold - max).abs(),
            if self.threshold >= max { "above it" } else { "below it" }
        )
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let drawn: usize = self.per_kind.iter().map(|k| k.1).sum();
        let [scratch, stain, patch] = self.per_kind.map(|(passed, n)| format!("{passed}/{n}"));
        write!(
            f,
            "at this threshold expect about {:.1} % false rejects, and {:.0} % escapes on defects like \
             the {drawn} drawn onto held-out images (passed: scratches {scratch}, stains {stain}, moved \
             patches {patch}; the threshold alone, before routing)",
            self.false_reject * 100.0,
            self.escape * 100.0,
        )
    }
}

/// The estimate for `task`, fitted from `train` with `params`: defects are drawn onto the
/// network's view of the held-out images its fit calibrated on.
pub fn expected_at_threshold(
    backbone: &Backbone,
    task: &Task,
    train: &[PathBuf],
    params: &FitParams,
) -> Result<Expected> {
    let (_, held) = split(train.len(), params.holdout, params.seed)?;
    let drawn = drawn_defects(&held, params.seed);
    let index = TaskIndex::new(task)?;
    let pre = Preprocessor::new(&backbone.meta);
    let features = extract_features_with(
        backbone,
        &drawn,
        &format!("{}: drawn defects", task.name),
        index.prompt(),
        |&(image, kind, seed)| {
            let path = &train[image];
            let view = pre.network_view(&load_rgb(path)?)?;
            draw_defect(&view, DRAWN_DEFECTS[kind], seed)
                .with_context(|| format!("{}: the network's view is under {MIN_SIDE} pixels", path.display()))
        },
    )?;
    let mut per_kind = [(0, 0); 3];
    let mut defect_scores = Vec::with_capacity(drawn.len());
    for (&(_, kind, _), f) in drawn.iter().zip(&features) {
        let score = image_score(&index.patch_scores(f)?);
        per_kind[kind].0 += usize::from(score <= task.threshold);
        per_kind[kind].1 += 1;
        defect_scores.push(score);
    }
    let normal = extract_features_with(
        backbone,
        &held,
        &format!("{}: held-out normal images", task.name),
        index.prompt(),
        |&image| pre.network_view(&load_rgb(&train[image])?),
    )?;
    let normal_scores = (normal.iter())
        .map(|f| Ok(image_score(&index.patch_scores(f)?)))
        .collect::<Result<Vec<f32>>>()?;
    let passed: usize = per_kind.iter().map(|k| k.0).sum();
    Ok(Expected {
        false_reject: f64::from(task.normal.target_false_reject),
        escape: passed as f64 / drawn.len() as f64,
        per_kind,
        threshold: task.threshold,
        normal_scores,
        defect_scores,
    })
}

/// (training image, index in [`DRAWN_DEFECTS`], seed) of each defect to draw: every kind on every held-out image, or
/// [`MAX_DRAWN`] spread evenly over them with the kinds in turn.
fn drawn_defects(held: &[usize], seed: u64) -> Vec<(usize, usize, u64)> {
    let count = (held.len() * DRAWN_DEFECTS.len()).min(MAX_DRAWN);
    (0..count)
        .map(|j| {
            let image = held[j * held.len() / count];
            let kind = j % DRAWN_DEFECTS.len();
            (image, kind, seed ^ ((image as u64) << 8) ^ j as u64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_defects_cover_the_held_out_images_and_every_kind_evenly() {
        let few = drawn_defects(&[4, 9], 0);
        assert_eq!(few.len(), 6);
        let many: Vec<usize> = (0..100).collect();
        let drawn = drawn_defects(&many, 0);
        assert_eq!(drawn.len(), MAX_DRAWN);
        for kind in 0..DRAWN_DEFECTS.len() {
            assert_eq!(drawn.iter().filter(|d| d.1 == kind).count(), MAX_DRAWN / 3);
        }
        let images: std::collections::BTreeSet<usize> = drawn.iter().map(|d| d.0).collect();
        assert_eq!(images.len(), MAX_DRAWN);
    }
}
