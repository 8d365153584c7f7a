//! Learning the generated products of a conveyor source, for dry runs and the demo.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use log::info;

use image::RgbImage;

use super::config::SourceConfig;
use super::pixels::{decode_jpeg, encode_jpeg};
use super::source::conveyor_products;
use crate::backbone::colour::image_colours;
use crate::backbone::extract::extract_features_with;
use crate::backbone::Backbone;
use crate::bank::Bank;
use crate::fit::{fit_from_features, FitParams};

/// Learns each product of the conveyor one after another from its normal training images (as
/// the camera delivers them: JPEG-compressed for an MJPEG source) and writes a new bank to
/// `path`.
pub fn learn_conveyor(backbone: &Backbone, source: &SourceConfig, path: &Path, params: &FitParams) -> Result<Bank> {
    let SourceConfig::Conveyor {
        size,
        train_images,
        mjpeg,
        ..
    } = *source
    else {
        anyhow::bail!("only a conveyor source has generated products to learn");
    };
    let dim = backbone.meta.feature_dim();
    let mut bank = Bank::for_backbone(&backbone.spec());
    for product in conveyor_products(source)? {
        let start = Instant::now();
        let indices: Vec<usize> = (0..train_images).collect();
        let capture = |i: &usize| -> Result<RgbImage> {
            let image = product.normal(size, *i);
            if !mjpeg {
                return Ok(image);
            }
            let mut captured = RgbImage::new(0, 0);
            decode_jpeg(&encode_jpeg(&image)?, &mut captured)?;
            Ok(captured)
        };
        let features = extract_features_with(backbone, &indices, &product.name, None, capture)?;
        let colours = image_colours(&backbone.meta, &indices, capture)?;
        bank.append(fit_from_features(&product.name, &features, &colours, dim, params)?)?;
        info!(
            "learned {} from {train_images} normal images in {:.1} s",
            product.name,
            start.elapsed().as_secs_f64()
        );
    }
    bank.save(path)?;
    Ok(bank)
}
