//! The validation pool: real sets turned into sets whose test splits are never read. Each set's
//! training images are split (seeded; the share `bench-routing --validate` holds out) into a fit
//! part and a held-out part. The written set trains on the fit part; its normal test images are
//! the held-out images, and its defective ones the same images with one drawn defect each (a
//! scratch, a stain or a moved patch, `data/defects.rs`), the pixels the drawing changed as the
//! ground truth. It is written in the MVTec AD layout (original images linked, not copied), so
//! `eval`, `bench-bank` and `bench-routing` run on it as on any set: settings and limits are
//! chosen there, and the real test splits are only reported.
//!
//! The drawn defects are the kind `ucad fit` estimates escapes from: on this pool the measured
//! and the expected escape rates count the same kind of defect by construction.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{GrayImage, Luma};

use crate::data::dataset::{load_task, TaskData};
use crate::data::defects::{draw_defect, DRAWN_DEFECTS};
use crate::data::folder::{load_rgb, save_image};
use crate::fit::split;

/// Share of a real set's training images held out for validation.
pub(crate) const VALIDATION_SHARE: f32 = 0.25;
/// Mixed into the seed so that this split differs from a fit's own calibration split.
pub(crate) const VALIDATION_SALT: u64 = 0x7e57;

/// Writes the validation set of each of `tasks` (read under `root`) under `out`, by the same
/// names; returns the names.
pub fn write_pool(root: &Path, tasks: &[String], out: &Path, seed: u64) -> Result<Vec<String>> {
    tasks
        .iter()
        .map(|name| write_set(&load_task(root, name)?, out, seed))
        .collect()
}

fn write_set(task: &TaskData, out: &Path, seed: u64) -> Result<String> {
    let dir = out.join(&task.name);
    if dir.exists() {
        bail!("{} exists: write the pool into an empty folder", dir.display());
    }
    let (fit, held) = split(task.train.len(), VALIDATION_SHARE, seed ^ VALIDATION_SALT)
        .with_context(|| format!("{}: its training images", task.name))?;
    for (i, &image) in fit.iter().enumerate() {
        link(&task.train[image], &dir.join("train/good"), i)?;
    }
    for (i, &image) in held.iter().enumerate() {
        let path = &task.train[image];
        link(path, &dir.join("test/good"), i)?;
        let normal = load_rgb(path)?;
        let kind = DRAWN_DEFECTS[i % DRAWN_DEFECTS.len()];
        let drawn = draw_defect(&normal, kind, seed.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64))
            .with_context(|| format!("{}: too small to draw a defect on", path.display()))?;
        let mask = GrayImage::from_fn(normal.width(), normal.height(), |x, y| {
            Luma([if drawn.get_pixel(x, y) != normal.get_pixel(x, y) {
                255
            } else {
                0
            }])
        });
        save_image(&drawn, &dir.join(format!("test/{}/{i:03}.png", kind.name())))?;
        save_image(
            &mask,
            &dir.join(format!("ground_truth/{}/{i:03}_mask.png", kind.name())),
        )?;
    }
    Ok(task.name.clone())
}

/// Links `image` into `folder` as its `i`-th image, keeping the extension.
fn link(image: &Path, folder: &Path, i: usize) -> Result<()> {
    std::fs::create_dir_all(folder).with_context(|| format!("cannot create {}", folder.display()))?;
    let target: PathBuf = image
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", image.display()))?;
    let extension = image
        .extension()
        .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
    let at = folder.join(format!("{i:03}{extension}"));
    std::os::unix::fs::symlink(&target, &at).with_context(|| format!("cannot link {}", at.display()))
}
