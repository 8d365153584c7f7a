//! Anomaly maps drawn over the image the network saw, for audits and reports.

use std::path::Path;

use anyhow::{ensure, Result};
use image::{Rgb, RgbImage};

use crate::data::folder::save_image;

/// Blends a colour ramp over `view` (the network's S×S view): transparent well below the
/// threshold, yellow at it, red at twice its distance from zero. `map` holds scores minus the
/// threshold, as the evaluation and the runtime report them.
pub(crate) fn overlay(view: &RgbImage, map: &[f32], threshold: f32) -> Result<RgbImage> {
    let (w, h) = view.dimensions();
    ensure!(
        map.len() == (w * h) as usize,
        "map has {} values for a {w}×{h} image",
        map.len()
    );
    let scale = threshold.abs().max(f32::EPSILON);
    Ok(RgbImage::from_fn(w, h, |x, y| {
        let level = ((map[(y * w + x) as usize] + scale) / (2.0 * scale)).clamp(0.0, 1.0);
        let colour = [255.0, 255.0 * (1.0 - (level - 0.5).max(0.0) * 2.0), 0.0];
        let alpha = (level - 0.25).max(0.0) / 0.75;
        let base = view.get_pixel(x, y);
        Rgb(std::array::from_fn(|c| {
            (base[c] as f32 * (1.0 - alpha) + colour[c] * alpha).round() as u8
        }))
    }))
}

pub fn save_overlay(path: &Path, view: &RgbImage, map: &[f32], threshold: f32) -> Result<()> {
    save_image(&overlay(view, map, threshold)?, path)
}
