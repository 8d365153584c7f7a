//! An image's colour, as a check on routing: the quartiles of each RGB channel and of the two
//! chroma differences R − G and B − G over the network's view. Patch features of a middle ViT
//! block barely tell a product from the same shape in another colour; the quartiles do, and a
//! defect covering less than a quarter of the part does not move them. The chroma quartiles
//! tell a grey product from a tinted one even when the grey product's brightness varies widely
//! (a real texture whose RGB spreads admit almost any colour).

use image::RgbImage;

use super::{BackboneMeta, Preprocessor};

/// 25 %, 50 % and 75 % quantiles in 0–255 units: R, G, B for each quantile in turn, then
/// R − G, B − G for each quantile in turn.
pub(crate) type Colour = [f32; COLOUR_DIMS];

pub const COLOUR_DIMS: usize = 15;

/// The colour of a normalised [1, 3, S, S] input, undoing the backbone's normalisation. Counts
/// levels on the stack: no allocation, so the inspection loop can call it.
pub(crate) fn colour_of(input: &[f32], meta: &BackboneMeta) -> Colour {
    let plane = input.len() / 3;
    let level = |c: usize, i: usize| {
        ((input[c * plane + i] * meta.std[c] + meta.mean[c]) * 255.0)
            .round()
            .clamp(0.0, 255.0) as usize
    };
    let mut channels = [[0u32; 256]; 3];
    // R − G and B − G, offset by 255.
    let mut chroma = [[0u32; 511]; 2];
    for i in 0..plane {
        let [r, g, b] = [level(0, i), level(1, i), level(2, i)];
        channels[0][r] += 1;
        channels[1][g] += 1;
        channels[2][b] += 1;
        chroma[0][r + 255 - g] += 1;
        chroma[1][b + 255 - g] += 1;
    }
    let mut colour = [0f32; COLOUR_DIMS];
    for (q, fraction) in [0.25, 0.5, 0.75].into_iter().enumerate() {
        for (c, histogram) in channels.iter().enumerate() {
            colour[3 * q + c] = quantile_level(histogram, plane, fraction);
        }
        for (c, histogram) in chroma.iter().enumerate() {
            colour[9 + 2 * q + c] = quantile_level(histogram, plane, fraction) - 255.0;
        }
    }
    colour
}

/// The colours of `images` as `load` reads them, on every core.
pub fn image_colours<T: Sync>(
    meta: &BackboneMeta,
    images: &[T],
    load: impl Fn(&T) -> anyhow::Result<RgbImage> + Sync,
) -> anyhow::Result<Vec<Colour>> {
    crate::parallel::map(
        images,
        || Preprocessor::new(meta),
        |pre, item| {
            let input = pre.tensor(&load(item)?)?;
            Ok(colour_of(input.try_as_plain_ram()?.as_slice::<f32>()?, meta))
        },
    )
}

/// The smallest level at or below which `fraction` of the `count` values lie.
fn quantile_level(histogram: &[u32], count: usize, fraction: f32) -> f32 {
    let wanted = (fraction * count as f32).ceil().max(1.0) as u32;
    let mut seen = 0;
    for (level, n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= wanted {
            return level as f32;
        }
    }
    (histogram.len() - 1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::Arch;

    fn meta() -> BackboneMeta {
        let (_, backbone) = crate::backbone::testing::tiny_backbone(1);
        backbone.meta
    }

    #[test]
    fn quartiles_come_back_in_pixel_units() {
        let meta = meta();
        // Left half red 200, right half red 40; green 100 everywhere; blue a ramp.
        let image = image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([if x < 16 { 200 } else { 40 }, 100, (y * 8) as u8])
        });
        let input = Preprocessor::new(&meta).tensor(&image).unwrap();
        let colour = colour_of(input.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(), &meta);
        assert_eq!([colour[0], colour[3], colour[6]], [40.0, 40.0, 200.0]);
        assert_eq!([colour[1], colour[4], colour[7]], [100.0; 3]);
        assert!((colour[5] - 120.0).abs() <= 8.0, "{colour:?}");
        // R − G is −60 on the right half, 100 on the left; B − G follows the ramp.
        assert_eq!([colour[9], colour[11], colour[13]], [-60.0, -60.0, 100.0]);
        assert!((colour[12] - 20.0).abs() <= 8.0, "{colour:?}");
        assert_eq!(meta.arch, Arch::VitTinyTest);
    }
}
