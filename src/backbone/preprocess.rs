//! Image → normalised network input, as the backbone's metadata prescribes.

use anyhow::{ensure, Result};
use image::imageops::{self, FilterType};
use image::RgbImage;
use tract_core::prelude::Tensor;

use super::meta::{BackboneMeta, Resize};

/// Holds the output buffer so that steady-state frames reuse it.
pub struct Preprocessor {
    size: usize,
    resize: Resize,
    mean: [f32; 3],
    std: [f32; 3],
    planes: Vec<f32>,
}

impl Preprocessor {
    pub fn new(meta: &BackboneMeta) -> Preprocessor {
        let size = meta.input_size;
        Preprocessor {
            size,
            resize: meta.resize,
            mean: meta.mean,
            std: meta.std,
            planes: vec![0.0; 3 * size * size],
        }
    }

    /// The S×S view of `image` the network sees (also what anomaly maps are drawn over).
    pub fn fit(&self, image: &RgbImage) -> Result<RgbImage> {
        let (w, h) = image.dimensions();
        ensure!(w > 0 && h > 0, "image is empty ({w}×{h})");
        let s = self.size as u32;
        Ok(match self.resize {
            Resize::Squash => imageops::resize(image, s, s, FilterType::Triangle),
            Resize::CenterCrop => {
                let scale = s as f64 / w.min(h) as f64;
                let (rw, rh) = (
                    ((w as f64 * scale).round() as u32).max(s),
                    ((h as f64 * scale).round() as u32).max(s),
                );
                let resized = imageops::resize(image, rw, rh, FilterType::Triangle);
                imageops::crop_imm(&resized, (rw - s) / 2, (rh - s) / 2, s, s).to_image()
            }
        })
    }

    /// [1, 3, S, S] normalised with the backbone's mean and std.
    pub fn tensor(&mut self, image: &RgbImage) -> Result<Tensor> {
        let fitted = self.fit(image)?;
        let plane = self.size * self.size;
        for (i, px) in fitted.pixels().enumerate() {
            for c in 0..3 {
                self.planes[c * plane + i] = (px[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        Tensor::from_shape(&[1, 3, self.size, self.size], &self.planes)
    }
}
