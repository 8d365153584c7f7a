//! Deterministic generated images, so that tests and the demo need no downloaded data: a family
//! of distinct "products" (textures and objects on a background) whose normal images vary a
//! little, and defects (scratches, spots, cracks, missing parts) drawn with their masks.

use std::path::Path;

use anyhow::Result;
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::folder::save_image;

/// A smooth coloured texture with a few blobs: structured enough to exercise a ViT, and the
/// same for the same seed on every machine.
pub fn textured_image(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let freq: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.02..0.12));
    let phase: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..std::f32::consts::TAU));
    let blobs: Vec<(f32, f32, f32)> = (0..4)
        .map(|_| {
            (
                rng.random_range(0.0..width as f32),
                rng.random_range(0.0..height as f32),
                rng.random_range(4.0..20.0),
            )
        })
        .collect();
    RgbImage::from_fn(width, height, |x, y| {
        let (xf, yf) = (x as f32, y as f32);
        let blob: f32 = blobs
            .iter()
            .map(|(cx, cy, r)| (-((xf - cx).powi(2) + (yf - cy).powi(2)) / (2.0 * r * r)).exp())
            .sum();
        Rgb(std::array::from_fn(|c| {
            let wave = ((xf * freq[c] + phase[c]).sin() * (yf * freq[(c + 1) % 3]).cos() + 1.0) * 0.35;
            ((wave + 0.4 * blob).clamp(0.0, 1.0) * 255.0) as u8
        }))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Weave,
    Stripes,
    Checker,
    Disc,
    Plate,
    Ring,
}

const PATTERNS: [Pattern; 6] = [
    Pattern::Weave,
    Pattern::Disc,
    Pattern::Stripes,
    Pattern::Plate,
    Pattern::Checker,
    Pattern::Ring,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Defect {
    Scratch,
    Spot,
    Crack,
    Missing,
}

pub(crate) const DEFECTS: [Defect; 4] = [Defect::Scratch, Defect::Spot, Defect::Crack, Defect::Missing];

impl Defect {
    pub fn name(self) -> &'static str {
        match self {
            Defect::Scratch => "scratch",
            Defect::Spot => "spot",
            Defect::Crack => "crack",
            Defect::Missing => "missing",
        }
    }
}

/// One generated product: a pattern with its own colours and scale.
#[derive(Debug, Clone)]
pub struct Product {
    pub name: String,
    pattern: Pattern,
    foreground: [f32; 3],
    background: [f32; 3],
    /// Spatial frequency of textures, in cycles per image.
    cycles: f32,
    seed: u64,
}

/// Per-image variation of a normal part: where it sits and how it is lit.
struct Pose {
    dx: f32,
    dy: f32,
    angle: f32,
    gain: f32,
}

/// `count` distinct products for a seed; product i is the same whatever `count` is.
pub fn products(count: usize, seed: u64) -> Vec<Product> {
    (0..count).map(|i| Product::new(i, seed)).collect()
}

impl Product {
    fn new(index: usize, seed: u64) -> Product {
        let seed = seed.wrapping_mul(1_000_003).wrapping_add(index as u64);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let pattern = PATTERNS[index % PATTERNS.len()];
        let mut colour = || std::array::from_fn(|_| rng.random_range(0.1..0.9));
        let (foreground, background) = (colour(), colour());
        Product {
            name: format!("{}_{index}", format!("{pattern:?}").to_lowercase()),
            pattern,
            foreground,
            background,
            cycles: rng.random_range(5.0..12.0),
            seed,
        }
    }

    fn rng(&self, role: u64, index: usize) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed ^ (role << 56) ^ (index as u64).wrapping_mul(0x9E37_79B9))
    }

    /// Normal image `index` of this product.
    pub fn normal(&self, size: u32, index: usize) -> RgbImage {
        let mut rng = self.rng(1, index);
        self.render(size, &mut rng)
    }

    /// Defective image `index`: the defect kind cycles with the index; the mask is 255 on the defect.
    pub fn defective(&self, size: u32, index: usize) -> (RgbImage, GrayImage, Defect) {
        let mut rng = self.rng(2, index);
        let mut image = self.render(size, &mut rng);
        let defect = DEFECTS[index % DEFECTS.len()];
        let mut mask = GrayImage::new(size, size);
        let paint = self.defect_paint(defect);
        let s = size as f32;
        let (cx, cy) = (rng.random_range(0.3..0.7) * s, rng.random_range(0.3..0.7) * s);
        let inside: Box<dyn Fn(f32, f32) -> bool> = match defect {
            Defect::Spot => {
                let r = rng.random_range(0.04..0.08) * s;
                Box::new(move |x, y| (x - cx).powi(2) + (y - cy).powi(2) < r * r)
            }
            Defect::Missing => {
                let (w, h) = (rng.random_range(0.12..0.2) * s, rng.random_range(0.12..0.2) * s);
                Box::new(move |x, y| (x - cx).abs() < w / 2.0 && (y - cy).abs() < h / 2.0)
            }
            Defect::Scratch | Defect::Crack => {
                let points = polyline(&mut rng, cx, cy, s, defect == Defect::Crack);
                let width = if defect == Defect::Crack { 0.012 * s } else { 0.008 * s };
                Box::new(move |x, y| near_polyline(&points, x, y, width.max(1.0)))
            }
        };
        for (x, y, pixel) in image.enumerate_pixels_mut() {
            if inside(x as f32 + 0.5, y as f32 + 0.5) {
                *pixel = to_rgb(paint);
                mask.put_pixel(x, y, Luma([255]));
            }
        }
        (image, mask, defect)
    }

    /// What a defect looks like on this product: missing material shows the background, the
    /// others are darker or brighter than anything on a normal part.
    fn defect_paint(&self, defect: Defect) -> [f32; 3] {
        let mean: f32 = self.foreground.iter().sum::<f32>() / 3.0;
        match defect {
            Defect::Missing => self.background.map(|c| 1.0 - c),
            Defect::Crack => [0.05; 3],
            Defect::Scratch => {
                if mean < 0.5 {
                    [0.95; 3]
                } else {
                    [0.05, 0.05, 0.1]
                }
            }
            Defect::Spot => [0.6, 0.35, 0.1].map(|c| if mean < 0.5 { c + 0.3 } else { c - 0.05 }),
        }
    }

    fn render(&self, size: u32, rng: &mut ChaCha8Rng) -> RgbImage {
        let pose = Pose {
            dx: rng.random_range(-0.03..0.03),
            dy: rng.random_range(-0.03..0.03),
            angle: rng.random_range(-0.06..0.06),
            gain: rng.random_range(0.95..1.05),
        };
        let noise_seed: u64 = rng.random();
        let mut noise = ChaCha8Rng::seed_from_u64(noise_seed);
        let s = size as f32;
        RgbImage::from_fn(size, size, |x, y| {
            let (u, v) = pose_coords(&pose, (x as f32 + 0.5) / s, (y as f32 + 0.5) / s);
            let weight = self.foreground_weight(u, v);
            let jitter = noise.random_range(-0.02..0.02);
            to_rgb(std::array::from_fn(|c| {
                (self.foreground[c] * weight + self.background[c] * (1.0 - weight)) * pose.gain + jitter
            }))
        })
    }

    /// How much of the foreground colour is at (u, v) ∈ [0, 1]², from 0 to 1.
    fn foreground_weight(&self, u: f32, v: f32) -> f32 {
        let tau = std::f32::consts::TAU;
        let (k, r) = (self.cycles, ((u - 0.5).powi(2) + (v - 0.5).powi(2)).sqrt());
        let smooth = |edge: f32, x: f32| (0.5 + (edge - x) * 60.0).clamp(0.0, 1.0);
        match self.pattern {
            Pattern::Weave => 0.5 + 0.25 * ((tau * k * u).sin() + (tau * k * v).sin()),
            Pattern::Stripes => 0.5 + 0.5 * (tau * k * (u + 0.3 * v)).sin(),
            Pattern::Checker => {
                let cell = ((u * k / 2.0).floor() + (v * k / 2.0).floor()) as i32;
                if cell % 2 == 0 {
                    0.85
                } else {
                    0.15
                }
            }
            Pattern::Disc => smooth(0.32, r) * (0.8 + 0.2 * (tau * 3.0 * r).cos()),
            Pattern::Ring => smooth(0.36, r) * (1.0 - smooth(0.18, r)),
            Pattern::Plate => {
                let square = smooth(0.3, (u - 0.5).abs().max((v - 0.5).abs()));
                let holes = [(0.38, 0.38), (0.62, 0.38), (0.38, 0.62), (0.62, 0.62)]
                    .iter()
                    .map(|(hx, hy)| smooth(0.05, ((u - hx).powi(2) + (v - hy).powi(2)).sqrt()))
                    .sum::<f32>();
                square * (1.0 - holes)
            }
        }
    }

    /// Writes the MVTec AD layout: train/good, test/good, test/<defect> and ground_truth masks.
    pub fn write_mvtec(&self, root: &Path, size: u32, counts: SplitCounts) -> Result<()> {
        let dir = root.join(&self.name);
        for i in 0..counts.train {
            save_image(&self.normal(size, i), &dir.join(format!("train/good/{i:03}.png")))?;
        }
        for i in 0..counts.test_good {
            save_image(
                &self.normal(size, counts.train + i),
                &dir.join(format!("test/good/{i:03}.png")),
            )?;
        }
        for i in 0..counts.test_defective {
            let (image, mask, defect) = self.defective(size, i);
            save_image(&image, &dir.join(format!("test/{}/{i:03}.png", defect.name())))?;
            save_image(
                &mask,
                &dir.join(format!("ground_truth/{}/{i:03}_mask.png", defect.name())),
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
pub struct SplitCounts {
    pub train: usize,
    pub test_good: usize,
    pub test_defective: usize,
}

fn pose_coords(pose: &Pose, u: f32, v: f32) -> (f32, f32) {
    let (x, y) = (u - 0.5 - pose.dx, v - 0.5 - pose.dy);
    let (sin, cos) = pose.angle.sin_cos();
    (x * cos - y * sin + 0.5, x * sin + y * cos + 0.5)
}

/// A scratch is nearly straight; a crack wanders.
fn polyline(rng: &mut ChaCha8Rng, cx: f32, cy: f32, size: f32, wander: bool) -> Vec<(f32, f32)> {
    let mut heading: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let step = 0.04 * size;
    let mut points = vec![(cx, cy)];
    for _ in 0..6 {
        heading += if wander {
            rng.random_range(-0.9..0.9)
        } else {
            rng.random_range(-0.1..0.1)
        };
        let (x, y) = *points.last().expect("non-empty");
        points.push((x + step * heading.cos(), y + step * heading.sin()));
    }
    points
}

/// Whether (x, y) lies within `width` of the polyline through `points`.
pub(crate) fn near_polyline(points: &[(f32, f32)], x: f32, y: f32, width: f32) -> bool {
    points.windows(2).any(|seg| {
        let ((ax, ay), (bx, by)) = (seg[0], seg[1]);
        let (vx, vy) = (bx - ax, by - ay);
        let t = (((x - ax) * vx + (y - ay) * vy) / (vx * vx + vy * vy)).clamp(0.0, 1.0);
        (x - ax - t * vx).powi(2) + (y - ay - t * vy).powi(2) <= width * width
    })
}

fn to_rgb(colour: [f32; 3]) -> Rgb<u8> {
    Rgb(colour.map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_are_deterministic_and_distinct() {
        let a = products(6, 7);
        let b = products(3, 7);
        assert_eq!(a[2].normal(64, 5), b[2].normal(64, 5));
        let names: std::collections::HashSet<_> = a.iter().map(|p| p.name.clone()).collect();
        assert_eq!(names.len(), 6);
        assert_ne!(a[0].normal(64, 0), a[0].normal(64, 1), "normal images vary");
    }

    #[test]
    fn defects_have_masks_where_the_image_changed() {
        for product in products(6, 1) {
            for i in 0..4 {
                let (image, mask, _) = product.defective(96, i);
                let marked = mask.pixels().filter(|p| p.0[0] == 255).count();
                assert!(
                    marked > 10 && marked < 96 * 96 / 4,
                    "{}: {marked} mask pixels",
                    product.name
                );
                assert_eq!(image.dimensions(), mask.dimensions());
            }
        }
    }
}
