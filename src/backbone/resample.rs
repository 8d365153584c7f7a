//! Bicubic resampling of a position-embedding grid, the way PyTorch's
//! `interpolate(mode="bicubic", align_corners=False)` and ONNX `Resize` (cubic, a = −0.75,
//! half_pixel, edge-clamped) do it, so that an exported graph matches the original one.

use anyhow::Result;

use super::arch::ArchSpec;
use super::weights::VitWeights;

const CUBIC_A: f64 = -0.75;

/// The CLS and patch position embeddings, [1 + grid², D], resampled from the stored grid.
pub(crate) fn position_embedding(w: &VitWeights, spec: &ArchSpec, grid: usize) -> Result<Vec<f32>> {
    let (d, stored) = (spec.embed_dim, spec.stored_grid);
    let pos = &w.get("pos_embed")?.data;
    if grid == stored {
        return Ok(pos.clone());
    }
    let mut out = pos[..d].to_vec();
    out.extend(resize_grid(&pos[d..], stored, grid, d));
    Ok(out)
}

/// The four (index, weight) taps of output position `out` when resizing `len_in` → `len_out`.
fn taps(out: usize, len_in: usize, len_out: usize) -> [(usize, f64); 4] {
    let x = (out as f64 + 0.5) * len_in as f64 / len_out as f64 - 0.5;
    let base = x.floor();
    let t = x - base;
    let a = CUBIC_A;
    let far = |d: f64| ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a;
    let near = |d: f64| ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0;
    let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
    let clamp = |i: f64| i.clamp(0.0, (len_in - 1) as f64) as usize;
    std::array::from_fn(|k| (clamp(base - 1.0 + k as f64), weights[k]))
}

/// Resizes a row-major `[grid_in, grid_in, dim]` grid to `[grid_out, grid_out, dim]`.
pub(crate) fn resize_grid(grid: &[f32], grid_in: usize, grid_out: usize, dim: usize) -> Vec<f32> {
    assert_eq!(
        grid.len(),
        grid_in * grid_in * dim,
        "grid size does not match its shape"
    );
    let mut rows = vec![0f64; grid_out * grid_in * dim];
    for oy in 0..grid_out {
        for (iy, wy) in taps(oy, grid_in, grid_out) {
            for x in 0..grid_in {
                let src = &grid[(iy * grid_in + x) * dim..][..dim];
                let dst = &mut rows[(oy * grid_in + x) * dim..][..dim];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += wy * *s as f64);
            }
        }
    }
    let mut out = vec![0f64; grid_out * grid_out * dim];
    for oy in 0..grid_out {
        for ox in 0..grid_out {
            let dst = &mut out[(oy * grid_out + ox) * dim..][..dim];
            for (ix, wx) in taps(ox, grid_in, grid_out) {
                let src = &rows[(oy * grid_in + ix) * dim..][..dim];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += wx * s);
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let grid: Vec<f32> = (0..3 * 3 * 2).map(|v| v as f32 * 0.37).collect();
        let out = resize_grid(&grid, 3, 3, 2);
        for (a, b) in grid.iter().zip(&out) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn constant_stays_constant_and_linear_ramp_is_kept_inside() {
        let constant = vec![2.5f32; 37 * 37];
        assert!(resize_grid(&constant, 37, 16, 1).iter().all(|v| (v - 2.5).abs() < 1e-5));
        // Cubic convolution reproduces a linear function away from the clamped border.
        let ramp: Vec<f32> = (0..8 * 8).map(|i| (i % 8) as f32).collect();
        let out = resize_grid(&ramp, 8, 4, 1);
        let expected = (1.0 + 0.5) * 8.0 / 4.0 - 0.5;
        assert!((out[1] - expected as f32).abs() < 1e-5, "{}", out[1]);
    }
}
