//! The `[source]` and `[roi]` sections: where frames come from and which part of them is judged.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use anyhow::{bail, ensure, Result};
use serde::Deserialize;

use super::count;

/// Frame rates a source may have.
pub const FPS: RangeInclusive<f64> = 0.01..=1000.0;
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Generated products passing at `fps`; defective parts with known ground truth.
    Conveyor {
        fps: f64,
        #[serde(default = "default_products")]
        products: usize,
        #[serde(default)]
        seed: u64,
        /// Parts of one product in a row before the line switches product.
        #[serde(default = "default_run_length")]
        run_length: usize,
        /// One part in `defect_every` is defective.
        #[serde(default = "default_defect_every")]
        defect_every: usize,
        #[serde(default = "default_frame_size")]
        size: u32,
        /// Normal training images per product written for `ucad fit` (see `ucad run --learn`).
        #[serde(default = "default_train_images")]
        train_images: usize,
        /// Deliver frames JPEG-compressed, as an MJPEG camera does (decoded in the loop).
        #[serde(default)]
        mjpeg: bool,
    },
    /// The images of a folder, in name order, at `fps` (looping when `repeat`).
    Folder {
        path: PathBuf,
        fps: f64,
        #[serde(default)]
        repeat: bool,
    },
    /// A V4L2 camera (feature `device`).
    V4l2 {
        device: PathBuf,
        width: u32,
        height: u32,
        fps: u32,
        format: PixelFormat,
    },
}

fn default_products() -> usize {
    2
}
fn default_run_length() -> usize {
    4
}
fn default_defect_every() -> usize {
    3
}
fn default_frame_size() -> u32 {
    256
}
fn default_train_images() -> usize {
    80
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    Mjpeg,
    Yuyv,
}

/// Region of interest in frame pixels, cropped before resizing to the backbone input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roi {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl SourceConfig {
    /// Frames per second the source delivers.
    pub fn fps(&self) -> f64 {
        match self {
            SourceConfig::Conveyor { fps, .. } | SourceConfig::Folder { fps, .. } => *fps,
            SourceConfig::V4l2 { fps, .. } => f64::from(*fps),
        }
    }

    /// Width and height of every frame, where the config says them.
    pub(super) fn frame_size(&self) -> Option<(u32, u32)> {
        match self {
            SourceConfig::Conveyor { size, .. } => Some((*size, *size)),
            SourceConfig::Folder { .. } => None,
            SourceConfig::V4l2 { width, height, .. } => Some((*width, *height)),
        }
    }

    pub(super) fn check(&self) -> Result<()> {
        let fps = self.fps();
        ensure!(
            FPS.contains(&fps),
            "source.fps must be between {} and {}, not {fps:?}",
            FPS.start(),
            FPS.end()
        );
        match self {
            SourceConfig::Conveyor {
                products,
                run_length,
                defect_every,
                size,
                train_images,
                ..
            } => {
                count("source.products", *products as u64, 1..=64)?;
                count("source.run_length", *run_length as u64, 1..=1 << 32)?;
                count("source.defect_every", *defect_every as u64, 1..=1 << 32)?;
                count("source.size", u64::from(*size), 16..=2048)?;
                count("source.train_images", *train_images as u64, 1..=10_000)?;
                // The clips are rendered at start-up: products × 16 frames of size² pixels.
                let bytes = *products as u64 * 16 * u64::from(*size).pow(2) * 3;
                ensure!(
                    bytes <= 1 << 30,
                    "source.products × source.size: {products} products of {size}×{size} frames take {} MiB \
                     to replay, at most 1024",
                    bytes >> 20
                );
            }
            SourceConfig::Folder { .. } => {}
            SourceConfig::V4l2 { width, height, .. } => {
                count("source.width", u64::from(*width), 1..=16_384)?;
                count("source.height", u64::from(*height), 1..=16_384)?;
            }
        }
        Ok(())
    }
}

impl Roi {
    /// Not empty, and inside a frame of `frame` (width, height) when that is known.
    pub fn check(&self, frame: Option<(u32, u32)>) -> Result<()> {
        ensure!(self.width > 0 && self.height > 0, "roi must not be empty");
        let (Some(right), Some(bottom)) = (self.x.checked_add(self.width), self.y.checked_add(self.height)) else {
            bail!("roi: x + width or y + height is beyond 2^32 pixels");
        };
        if let Some((width, height)) = frame {
            ensure!(
                right <= width && bottom <= height,
                "roi (x {} + width {}, y {} + height {}) lies outside the {width}×{height} frame",
                self.x,
                self.width,
                self.y,
                self.height
            );
        }
        Ok(())
    }
}
