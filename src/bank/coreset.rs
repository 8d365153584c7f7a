//! Greedy k-center coreset (as in PatchCore): repeatedly take the row farthest from everything
//! taken so far, measured in a seeded random projection so that selection stays cheap.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Dimension of the random projection used for the distances during selection.
pub const PROJECTION_DIM: usize = 128;

/// Indices of `count` rows of the row-major [n, dim] `rows`, chosen greedily; deterministic
/// for a seed. Returns every index when `count >= n`.
pub fn greedy_coreset(rows: &[f32], dim: usize, count: usize, seed: u64) -> Vec<usize> {
    let n = rows.len() / dim;
    if count >= n {
        return (0..n).collect();
    }
    if count == 0 {
        return Vec::new();
    }
    let projected = project(rows, dim, seed);
    let p = PROJECTION_DIM.min(dim);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let first = rng.random_range(0..n);
    let mut chosen = Vec::with_capacity(count);
    let mut nearest = vec![f32::INFINITY; n];
    let mut current = first;
    for _ in 0..count {
        chosen.push(current);
        let c = &projected[current * p..(current + 1) * p];
        for (i, best) in nearest.iter_mut().enumerate() {
            let d: f32 = projected[i * p..(i + 1) * p]
                .iter()
                .zip(c)
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            *best = best.min(d);
        }
        current = nearest
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i)
            .expect("n > 0");
    }
    chosen
}

/// Rows times a Gaussian [dim, 128] matrix (or the rows themselves when dim ≤ 128).
fn project(rows: &[f32], dim: usize, seed: u64) -> Vec<f32> {
    if dim <= PROJECTION_DIM {
        return rows.to_vec();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scale = 1.0 / (PROJECTION_DIM as f32).sqrt();
    let matrix: Vec<f32> = (0..dim * PROJECTION_DIM)
        .map(|_| {
            // Box–Muller: a standard normal from two uniforms.
            let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos() * scale
        })
        .collect();
    let n = rows.len() / dim;
    let mut out = vec![0f32; n * PROJECTION_DIM];
    crate::detect::knn::matmul(rows, &matrix, &mut out, n, dim, PROJECTION_DIM);
    out
}

/// The selected rows, in selection order.
pub fn gather_rows(rows: &[f32], dim: usize, indices: &[usize]) -> Vec<f32> {
    indices
        .iter()
        .flat_map(|i| rows[i * dim..(i + 1) * dim].iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_deterministic_for_a_seed_and_covers_clusters() {
        // Four tight clusters far apart: a 4-row coreset must take one row from each.
        let dim = 200;
        let mut rows = Vec::new();
        for c in 0..4 {
            for j in 0..25 {
                rows.extend((0..dim).map(|d| if d == c * 10 { 100.0 } else { (j as f32) * 1e-3 }));
            }
        }
        let a = greedy_coreset(&rows, dim, 4, 3);
        assert_eq!(a, greedy_coreset(&rows, dim, 4, 3));
        let mut clusters: Vec<usize> = a.iter().map(|i| i / 25).collect();
        clusters.sort();
        assert_eq!(clusters, vec![0, 1, 2, 3]);
        assert_eq!(greedy_coreset(&rows, dim, 500, 3).len(), 100);
    }
}
