//! Structure-based contrastive learning (SCL): patch features that share a segment are drawn
//! together, features of different segments pushed apart.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor, D};
use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SclLoss {
    /// The paper code's loss, τ = 0.5, over all patch pairs (i, j) of an image, self-pairs and
    /// unsegmented patches (label 0) included: mean[−m·s/τ + (1 − m)·exp(s/τ)], m = same label.
    Paper,
    /// Supervised contrastive (InfoNCE) per anchor patch, τ = 0.1: −mean over its positives of
    /// log softmax over all other patches. Bounded below and normalised per anchor, so segments
    /// of any size weigh alike; unsegmented patches are neither anchors nor positives.
    SupCon,
}

impl SclLoss {
    fn temperature(self) -> f64 {
        match self {
            SclLoss::Paper => 0.5,
            SclLoss::SupCon => 0.1,
        }
    }

    /// The mean loss of a batch: features [B, N, F], one segment label per patch (B·N labels).
    pub fn loss(self, features: &Tensor, labels: &[u32]) -> Result<Tensor> {
        let (batch, patches, _) = features.dims3()?;
        ensure!(
            labels.len() == batch * patches,
            "{} labels for {batch} images of {patches} patches",
            labels.len()
        );
        let norms = features.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let unit = features.broadcast_div(&(norms + 1e-12)?)?;
        let logits = (unit.matmul(&unit.t()?.contiguous()?)? / self.temperature())?;
        let dtype = features.dtype();
        let constant = |values: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(values, (batch, patches, patches), &Device::Cpu)?.to_dtype(dtype)?)
        };
        match self {
            SclLoss::Paper => {
                let same = constant(same_label(labels, patches))?;
                let attract = (&same * &logits)?;
                let repel = ((1.0 - &same)? * logits.exp()?)?;
                Ok((repel - attract)?.mean_all()?)
            }
            SclLoss::SupCon => {
                let (weights, others) = supcon_weights(labels, patches);
                ensure!(
                    weights.iter().any(|w| *w > 0.0),
                    "no two patches of one image share a segment: nothing to contrast"
                );
                let (weights, others) = (constant(weights)?, constant(others)?);
                let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?;
                let denominator = (shifted.exp()? * &others)?.sum_keepdim(D::Minus1)?.log()?;
                let log_prob = shifted.broadcast_sub(&denominator)?;
                Ok((weights * log_prob)?.sum_all()?.neg()?)
            }
        }
    }
}

/// m[b, i, j] = 1 when patches i and j of image b carry the same label.
fn same_label(labels: &[u32], patches: usize) -> Vec<f32> {
    labels
        .chunks(patches)
        .flat_map(|image| {
            image
                .iter()
                .flat_map(move |a| image.iter().map(move |b| f32::from(u8::from(a == b))))
        })
        .collect()
}

/// SupCon's pair weights and denominators: w[b, i, j] = 1/(|P(i)|·anchors) for a positive j of
/// anchor i (same non-zero label, j ≠ i), so that Σ w·log p is the mean over anchors of the
/// mean over their positives; others[b, i, j] = 1 for j ≠ i.
fn supcon_weights(labels: &[u32], patches: usize) -> (Vec<f32>, Vec<f32>) {
    let positives = |image: &[u32], i: usize| {
        (0..patches)
            .filter(|&j| j != i && image[i] != 0 && image[j] == image[i])
            .count()
    };
    let anchors = labels
        .chunks(patches)
        .map(|image| (0..patches).filter(|&i| positives(image, i) > 0).count())
        .sum::<usize>()
        .max(1);
    let mut weights = Vec::with_capacity(labels.len() * patches);
    let mut others = Vec::with_capacity(labels.len() * patches);
    for image in labels.chunks(patches) {
        for i in 0..patches {
            let share = 1.0 / (positives(image, i).max(1) * anchors) as f32;
            for j in 0..patches {
                let positive = j != i && image[i] != 0 && image[j] == image[i];
                weights.push(if positive { share } else { 0.0 });
                others.push(f32::from(u8::from(j != i)));
            }
        }
    }
    (weights, others)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn features(rows: &[[f64; 2]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (1, rows.len(), 2), &Device::Cpu).unwrap()
    }

    fn value(t: Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn the_paper_loss_matches_its_formula_on_a_small_case() {
        // Two patches at 90°: s = [[1, 0], [0, 1]]; labels differ.
        let loss = value(
            SclLoss::Paper
                .loss(&features(&[[1.0, 0.0], [0.0, 2.0]]), &[1, 2])
                .unwrap(),
        );
        // Diagonal: −1/0.5 each; off-diagonal: exp(0) each; mean over 4 pairs.
        assert!((loss - (-2.0 - 2.0 + 1.0 + 1.0) / 4.0).abs() < 1e-9, "{loss}");
    }

    #[test]
    fn both_losses_prefer_features_that_follow_the_segments() {
        let labels = [1, 1, 2, 2];
        let following = features(&[[1.0, 0.1], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]]);
        let crossing = features(&[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]]);
        for loss in [SclLoss::Paper, SclLoss::SupCon] {
            let good = value(loss.loss(&following, &labels).unwrap());
            let bad = value(loss.loss(&crossing, &labels).unwrap());
            assert!(good < bad, "{loss:?}: {good} vs {bad}");
        }
    }

    #[test]
    fn supcon_needs_a_shared_segment() {
        let err = SclLoss::SupCon
            .loss(&features(&[[1.0, 0.0], [0.0, 1.0]]), &[1, 2])
            .unwrap_err();
        assert!(err.to_string().contains("share a segment"), "{err}");
    }
}
