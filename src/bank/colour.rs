//! A task's normal colours, as the bank stores them: the check on routing that tells a product
//! from the same shape in another colour (the colour itself: `crate::backbone::colour`).

use serde::{Deserialize, Serialize};

use crate::backbone::colour::{Colour, COLOUR_DIMS};

/// A task's normal colours: their mean and spread, and how many spreads away a part of the
/// task may lie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColourStats {
    pub mean: Colour,
    /// Standard deviation, at least [`SPREAD_FLOOR`].
    pub spread: Colour,
    pub limit: f32,
}

/// The smallest spread, in 0–255 units: generated products and static scenes barely vary.
pub(crate) const SPREAD_FLOOR: f32 = 2.0;
/// Normalised colour distance beyond which an image is not in a task's colours (chosen on
/// validation runs, docs/LIMITS.md).
pub(crate) const COLOUR_LIMIT: f32 = 10.0;

impl ColourStats {
    /// From the colours of a task's normal images.
    pub fn fit(colours: &[Colour]) -> ColourStats {
        let n = colours.len().max(1) as f32;
        let mut mean = [0f32; COLOUR_DIMS];
        let mut spread = [0f32; COLOUR_DIMS];
        for d in 0..COLOUR_DIMS {
            mean[d] = colours.iter().map(|c| c[d]).sum::<f32>() / n;
            let var = colours.iter().map(|c| (c[d] - mean[d]).powi(2)).sum::<f32>() / n;
            spread[d] = var.sqrt().max(SPREAD_FLOOR);
        }
        ColourStats {
            mean,
            spread,
            limit: COLOUR_LIMIT,
        }
    }

    /// The largest deviation of any quartile, in spreads.
    pub fn distance(&self, colour: &Colour) -> f32 {
        (0..COLOUR_DIMS)
            .map(|d| (colour[d] - self.mean[d]).abs() / self.spread[d])
            .fold(0.0, f32::max)
    }

    pub fn fits(&self, colour: &Colour) -> bool {
        self.distance(colour) <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_colour_is_judged_in_the_task_spreads_with_a_floor() {
        let colours = [[100.0; COLOUR_DIMS]; 3];
        let stats = ColourStats::fit(&colours);
        assert_eq!(stats.spread, [SPREAD_FLOOR; COLOUR_DIMS]);
        let mut near = [100.0; COLOUR_DIMS];
        near[4] = 100.0 + SPREAD_FLOOR * COLOUR_LIMIT;
        assert!(stats.fits(&near));
        near[4] += 1.0;
        assert!(!stats.fits(&near));
    }
}
