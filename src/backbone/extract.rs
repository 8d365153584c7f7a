//! Patch features of many images at once: every core, one tract plan, one preprocessor per
//! worker, with a progress bar.

use std::path::PathBuf;

use anyhow::Result;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};

use super::{Backbone, Preprocessor, Prompt};
use crate::data::folder::load_rgb;

/// Plain patch features of each image file, on every core, with a progress bar.
pub fn extract_features(backbone: &Backbone, images: &[PathBuf], label: &str) -> Result<Vec<Vec<f32>>> {
    extract_features_with(backbone, images, label, None, |p| load_rgb(p))
}

/// Patch features (plain, or under `prompt`) of each item as `load` turns it into an image, on
/// every core (one tract plan, one preprocessor per worker), with a progress bar. Order follows
/// `images`.
pub(crate) fn extract_features_with<T: Sync>(
    backbone: &Backbone,
    images: &[T],
    label: &str,
    prompt: Option<&Prompt>,
    load: impl Fn(&T) -> Result<RgbImage> + Sync,
) -> Result<Vec<Vec<f32>>> {
    let bar = ProgressBar::new(images.len() as u64).with_message(label.to_string());
    bar.set_style(ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed}<{eta}]").expect("template"));
    let features = crate::parallel::map(
        images,
        || Preprocessor::new(&backbone.meta),
        |pre, item| {
            bar.inc(1);
            backbone.features(pre.tensor(&load(item)?)?, prompt)
        },
    );
    bar.finish_and_clear();
    features
}
