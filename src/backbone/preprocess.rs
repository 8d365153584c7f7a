//! Image → normalised network input, as the backbone's metadata prescribes.

use anyhow::{ensure, Result};
use image::imageops::{self, FilterType};
use image::{GrayImage, ImageBuffer, Pixel, RgbImage};
use tract_core::prelude::Tensor;

use super::meta::{BackboneMeta, Resize};

type Image<P> = ImageBuffer<P, Vec<<P as Pixel>::Subpixel>>;

/// Where a frame's pixels land in the network's S×S view (and so in an anomaly map).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewGeometry {
    /// The whole frame.
    pub frame: (u32, u32),
    /// The part of it that was judged (x, y, width, height): all of it, or a region of interest.
    pub window: (u32, u32, u32, u32),
    /// The window resized (squash: S×S; centre crop: shorter side S, aspect kept).
    pub resized: (u32, u32),
    /// Top-left of the S×S view in the resized window.
    pub offset: (u32, u32),
    pub size: u32,
}

impl ViewGeometry {
    /// The same view, its window placed at `origin` in a larger `frame` (a region of interest).
    pub fn within(self, origin: (u32, u32), frame: (u32, u32)) -> ViewGeometry {
        ViewGeometry {
            frame,
            window: (origin.0, origin.1, self.window.2, self.window.3),
            ..self
        }
    }

    /// The same view over the frame shown at another size (a thumbnail).
    pub fn shown_at(self, frame: (u32, u32)) -> ViewGeometry {
        let (sx, sy) = (
            frame.0 as f64 / self.frame.0 as f64,
            frame.1 as f64 / self.frame.1 as f64,
        );
        let (x, y, w, h) = self.window;
        let scale = |v: u32, s: f64| ((v as f64 * s).round() as u32).max(1);
        ViewGeometry {
            frame,
            window: (
                (x as f64 * sx).round() as u32,
                (y as f64 * sy).round() as u32,
                scale(w, sx),
                scale(h, sy),
            ),
            ..self
        }
    }

    /// The view coordinates of frame pixel (`x`, `y`)'s centre, in pixels of the view whose
    /// centres are at whole numbers; `None` when the network does not see that pixel.
    pub fn to_view(&self, x: u32, y: u32) -> Option<(f32, f32)> {
        let (wx, wy, ww, wh) = self.window;
        let axis = |p: u32, start: u32, length: u32, resized: u32, offset: u32| {
            let p = p.checked_sub(start)?;
            let at = (p as f32 + 0.5) * resized as f32 / length as f32 - offset as f32;
            (0.0..self.size as f32).contains(&at).then_some(at - 0.5)
        };
        Some((
            axis(x, wx, ww, self.resized.0, self.offset.0)?,
            axis(y, wy, wh, self.resized.1, self.offset.1)?,
        ))
    }
}

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

    /// Side of the square network input, and of anomaly maps.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The S×S view of `image` the network sees.
    pub fn network_view(&self, image: &RgbImage) -> Result<RgbImage> {
        self.view_with(image, FilterType::Triangle)
    }

    /// A mask or label map in the same geometry as [`Preprocessor::network_view`] (nearest neighbour,
    /// so that no new values appear).
    pub(crate) fn network_view_nearest<P: Pixel + 'static>(&self, map: &Image<P>) -> Result<Image<P>> {
        self.view_with(map, FilterType::Nearest)
    }

    /// The binary ground truth in the network's view (mask > 0.5 after [`Preprocessor::network_view_nearest`]);
    /// all false without a mask (a normal part).
    pub fn truth(&self, mask: Option<&GrayImage>) -> Result<Vec<bool>> {
        match mask {
            Some(mask) => Ok(self
                .network_view_nearest(mask)?
                .pixels()
                .map(|p| p.0[0] > 127)
                .collect()),
            None => Ok(vec![false; self.size * self.size]),
        }
    }

    fn view_with<P: Pixel + 'static>(&self, image: &Image<P>, filter: FilterType) -> Result<Image<P>> {
        let (w, h) = image.dimensions();
        let g = self.geometry(w, h)?;
        let s = self.size as u32;
        let resized = imageops::resize(image, g.resized.0, g.resized.1, filter);
        Ok(match self.resize {
            Resize::Squash => resized,
            Resize::CenterCrop => imageops::crop_imm(&resized, g.offset.0, g.offset.1, s, s).to_image(),
        })
    }

    /// How a `w`×`h` frame becomes the network's view: the size it is resized to, and the
    /// offset of the S×S window taken from that.
    pub fn geometry(&self, w: u32, h: u32) -> Result<ViewGeometry> {
        ensure!(w > 0 && h > 0, "image is empty ({w}×{h})");
        let s = self.size as u32;
        let resized = match self.resize {
            Resize::Squash => (s, s),
            Resize::CenterCrop => {
                let scale = s as f64 / w.min(h) as f64;
                (
                    ((w as f64 * scale).round() as u32).max(s),
                    ((h as f64 * scale).round() as u32).max(s),
                )
            }
        };
        Ok(ViewGeometry {
            frame: (w, h),
            window: (0, 0, w, h),
            resized,
            offset: ((resized.0 - s) / 2, (resized.1 - s) / 2),
            size: s,
        })
    }

    /// [1, 3, S, S] normalised with the backbone's mean and std.
    pub fn tensor(&mut self, image: &RgbImage) -> Result<Tensor> {
        let resized = self.network_view(image)?;
        let plane = self.size * self.size;
        for (i, px) in resized.pixels().enumerate() {
            for c in 0..3 {
                self.planes[c * plane + i] = (px[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        Tensor::from_shape(&[1, 3, self.size, self.size], &self.planes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::{export::ExportOptions, Arch};

    fn meta(resize: Resize) -> BackboneMeta {
        let opts = ExportOptions {
            resize,
            ..ExportOptions::defaults(Arch::VitTinyTest)
        };
        let spec = Arch::VitTinyTest.spec();
        BackboneMeta {
            arch: Arch::VitTinyTest,
            patch: spec.patch,
            input_size: opts.input_size,
            embed_dim: spec.embed_dim,
            heads: spec.heads,
            feature_blocks: opts.blocks,
            prompt_blocks: 2,
            prompt_len: 1,
            resize,
            mean: spec.mean,
            std: spec.std,
            weights_sha256: String::new(),
            quant: opts.quant,
        }
    }

    #[test]
    fn normalises_each_channel_with_the_metadata_constants() {
        let m = meta(Resize::Squash);
        let img = RgbImage::from_pixel(50, 20, image::Rgb([255, 0, 128]));
        let t = Preprocessor::new(&m).tensor(&img).unwrap();
        assert_eq!(t.shape(), [1, 3, 32, 32]);
        let v = t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        let plane = 32 * 32;
        for (c, px) in [255.0f32, 0.0, 128.0].iter().enumerate() {
            let want = (px / 255.0 - m.mean[c]) / m.std[c];
            assert!(v[c * plane..(c + 1) * plane].iter().all(|x| (x - want).abs() < 1e-5));
        }
    }

    #[test]
    fn center_crop_keeps_the_middle_and_squash_keeps_everything() {
        // Left third red, middle green, right third blue.
        let img = RgbImage::from_fn(96, 32, |x, _| match x / 32 {
            0 => image::Rgb([255, 0, 0]),
            1 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let cropped = Preprocessor::new(&meta(Resize::CenterCrop)).network_view(&img).unwrap();
        assert!(cropped.pixels().all(|p| p[1] > 200));
        let squashed = Preprocessor::new(&meta(Resize::Squash)).network_view(&img).unwrap();
        assert_eq!(squashed.get_pixel(0, 16)[0], 255);
        assert_eq!(squashed.get_pixel(31, 16)[2], 255);
    }

    #[test]
    fn a_region_of_interest_places_the_view_in_the_frame() {
        let pre = Preprocessor::new(&meta(Resize::Squash));
        let alone = pre.geometry(64, 48).unwrap();
        let placed = alone.within((100, 20), (640, 480));
        assert_eq!(placed.to_view(105, 27), alone.to_view(5, 7));
        assert!(alone.to_view(5, 7).is_some());
        for outside in [(99, 30), (164, 30), (120, 19), (120, 68)] {
            assert_eq!(placed.to_view(outside.0, outside.1), None, "{outside:?}");
        }
    }

    #[test]
    fn a_thumbnail_sees_the_view_where_the_frame_does() {
        let pre = Preprocessor::new(&meta(Resize::CenterCrop));
        let full = pre.geometry(400, 200).unwrap();
        let half = full.shown_at((200, 100));
        for (x, y) in [(0, 50), (60, 20), (100, 50), (170, 90)] {
            let (a, b) = (half.to_view(x, y), full.to_view(2 * x + 1, 2 * y + 1));
            match (a, b) {
                (Some(a), Some(b)) => assert!((a.0 - b.0).abs() < 0.2 && (a.1 - b.1).abs() < 0.2, "{a:?} {b:?}"),
                _ => assert_eq!(a.is_some(), b.is_some(), "({x}, {y})"),
            }
        }
    }
}
