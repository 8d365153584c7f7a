//! Deterministic generated images, so that tests and the demo need no downloaded data.

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
