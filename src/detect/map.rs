//! Patch scores → a pixel anomaly map: bilinear up-sampling (half-pixel centres) then a
//! Gaussian blur with σ = 4 pixels, as PatchCore and UCAD do.

pub(crate) const SIGMA: f32 = 4.0;

/// Bilinearly resizes a row-major [grid, grid] map to [size, size].
pub(crate) fn upsample(scores: &[f32], grid: usize, size: usize) -> Vec<f32> {
    let scale = grid as f32 / size as f32;
    let coord = |o: usize| -> (usize, usize, f32) {
        let x = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, (grid - 1) as f32);
        let lo = x.floor() as usize;
        (lo, (lo + 1).min(grid - 1), x - lo as f32)
    };
    let mut out = vec![0f32; size * size];
    for oy in 0..size {
        let (y0, y1, fy) = coord(oy);
        for ox in 0..size {
            let (x0, x1, fx) = coord(ox);
            let top = scores[y0 * grid + x0] * (1.0 - fx) + scores[y0 * grid + x1] * fx;
            let bottom = scores[y1 * grid + x0] * (1.0 - fx) + scores[y1 * grid + x1] * fx;
            out[oy * size + ox] = top * (1.0 - fy) + bottom * fy;
        }
    }
    out
}

/// Separable Gaussian blur of a [size, size] map, edges replicated.
pub(crate) fn gaussian_blur(map: &[f32], size: usize, sigma: f32) -> Vec<f32> {
    let radius = (4.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let clamp = |i: isize| i.clamp(0, size as isize - 1) as usize;
    let mut rows = vec![0f32; map.len()];
    for y in 0..size {
        for x in 0..size {
            rows[y * size + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| w * map[y * size + clamp(x as isize + k as isize - radius)])
                .sum();
        }
    }
    let mut out = vec![0f32; map.len()];
    for y in 0..size {
        for x in 0..size {
            out[y * size + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| w * rows[clamp(y as isize + k as isize - radius) * size + x])
                .sum();
        }
    }
    out
}

/// The anomaly map at `size`×`size` for a patch grid of scores.
pub fn anomaly_map(scores: &[f32], grid: usize, size: usize) -> Vec<f32> {
    gaussian_blur(&upsample(scores, grid, size), size, SIGMA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_scores_give_a_constant_map_and_a_peak_stays_in_place() {
        let map = anomaly_map(&[2.0; 16], 4, 32);
        assert!(map.iter().all(|v| (v - 2.0).abs() < 1e-5));
        let mut scores = vec![0.0; 16];
        scores[5] = 1.0; // row 1, column 1
        let map = anomaly_map(&scores, 4, 32);
        let peak = map.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        let (py, px) = (peak / 32, peak % 32);
        assert!((10..=13).contains(&py) && (10..=13).contains(&px), "peak at {py},{px}");
        let mass_in: f32 = map.iter().sum::<f32>();
        assert!(mass_in > 0.0);
    }
}
