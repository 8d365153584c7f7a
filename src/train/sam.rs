//! SAM automatic mask generation (candle-transformers' SAM ViT-B or MobileSAM) as a segment
//! source, for users who have the weights: none ship with ucad or can be fetched here.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::segment_anything::sam::{Sam, IMAGE_SIZE};
use image::imageops::{self, FilterType};
use image::RgbImage;

use super::masks::{LabelMap, Segmenter};
use crate::backbone::Preprocessor;

/// SAM's low-resolution mask side: a quarter of its 1024 input.
const MASK_SIDE: usize = IMAGE_SIZE / 4;

pub(crate) struct SamSegmenter {
    sam: Sam,
    /// Point prompts per side of the grid the generator tries (SAM's default: 32).
    pub points_per_side: usize,
}

impl SamSegmenter {
    /// SAM ViT-B or MobileSAM weights in the safetensors layout candle-transformers reads.
    pub fn load(weights: &Path) -> Result<SamSegmenter> {
        let tensors = candle_core::safetensors::load(weights, &Device::Cpu)
            .with_context(|| format!("cannot read SAM weights {}", weights.display()))?;
        let has = |prefix: &str| tensors.keys().any(|k| k.starts_with(prefix));
        let tiny = if has("image_encoder.layers.") {
            true
        } else if has("image_encoder.blocks.") {
            false
        } else {
            bail!("{} holds neither SAM ViT-B nor MobileSAM weights", weights.display());
        };
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        SamSegmenter::new(vb, tiny).with_context(|| format!("SAM weights {}", weights.display()))
    }

    /// `tiny`: MobileSAM's TinyViT image encoder, else SAM ViT-B's.
    pub fn new(vb: VarBuilder, tiny: bool) -> Result<SamSegmenter> {
        let sam = if tiny {
            Sam::new_tiny(vb)?
        } else {
            Sam::new(768, 12, 12, &[2, 5, 8, 11], vb)?
        };
        Ok(SamSegmenter {
            sam,
            points_per_side: 32,
        })
    }
}

impl Segmenter for SamSegmenter {
    fn segment(&self, path: &Path, view: &RgbImage, _: &Preprocessor) -> Result<LabelMap> {
        let side = IMAGE_SIZE as u32;
        let resized = imageops::resize(view, side, side, FilterType::Triangle);
        let image = Tensor::from_vec(resized.into_raw(), (IMAGE_SIZE, IMAGE_SIZE, 3), &Device::Cpu)?
            .permute((2, 0, 1))?
            .to_dtype(DType::F32)?;
        let found = self
            .sam
            .generate_masks(&image, self.points_per_side, 0, 512.0 / 1500.0, 1)
            .with_context(|| format!("SAM masks of {}", path.display()))?;
        let masks = found
            .iter()
            .map(|b| {
                Ok(b.data
                    .flatten_all()?
                    .to_vec1::<u32>()?
                    .into_iter()
                    .map(|v| v > 0)
                    .collect())
            })
            .collect::<Result<Vec<Vec<bool>>>>()?;
        Ok(LabelMap::paint(MASK_SIDE, MASK_SIDE, masks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No SAM weights exist on this machine: random MobileSAM weights check the shapes only.
    #[test]
    fn sam_with_random_weights_gives_a_label_map_over_the_view() {
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let mut sam = SamSegmenter::new(vb, true).unwrap();
        sam.points_per_side = 2;
        let (_, backbone) = crate::backbone::testing::tiny_backbone(1);
        let (meta, pre) = (&backbone.meta, Preprocessor::new(&backbone.meta));
        let view = RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 90]));
        let map = sam.segment(Path::new("part.png"), &view, &pre).unwrap();
        assert_eq!((map.width, map.height), (MASK_SIDE, MASK_SIDE));
        assert_eq!(map.to_patches(meta.grid()).len(), meta.patches());
    }
}
