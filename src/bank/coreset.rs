//! Greedy k-center coreset (as in PatchCore): repeatedly take the row farthest from everything
//! taken so far, measured in a seeded random projection so that selection stays cheap.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Dimension of the random projection used for the distances during selection.
pub(crate) const PROJECTION_DIM: usize = 128;

/// Indices of `count` rows of the row-major [n, dim] `rows`, chosen greedily; deterministic
/// for a seed. Returns every index when `count >= n`.
pub(crate) fn greedy_coreset(rows: &[f32], dim: usize, count: usize, seed: u64) -> Vec<usize> {
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
    // Large sets are split over the cores, one chunk per worker (each step streams all rows).
    let workers = if n >= PARALLEL_ROWS {
        crate::parallel::threads()
    } else {
        1
    };
    let chunk = n.div_ceil(workers);
    crate::parallel::install(|| {
        for _ in 0..count {
            chosen.push(current);
            let centre = &projected[current * p..(current + 1) * p];
            current = nearest
                .par_chunks_mut(chunk)
                .zip(projected.par_chunks(chunk * p))
                .enumerate()
                .map(|(w, (near, rows))| relax(near, rows, centre, p, w * chunk))
                .reduce(|| (f32::NEG_INFINITY, usize::MAX), farther)
                .1;
        }
    });
    chosen
}

/// Below this many rows one worker is faster than handing chunks to the pool every step.
const PARALLEL_ROWS: usize = 16_384;

/// Lowers each row's distance to the chosen set with the new centre; returns the farthest row
/// (distance, global index) of this slice.
fn relax(nearest: &mut [f32], rows: &[f32], centre: &[f32], p: usize, offset: usize) -> (f32, usize) {
    let mut best = (f32::NEG_INFINITY, usize::MAX);
    for (i, (near, row)) in nearest.iter_mut().zip(rows.chunks_exact(p)).enumerate() {
        *near = near.min(squared_distance(row, centre));
        best = farther(best, (*near, offset + i));
    }
    best
}

/// The farther of two candidates; the lower index on ties, so the result does not depend on
/// how rows were split between workers.
fn farther(a: (f32, usize), b: (f32, usize)) -> (f32, usize) {
    match a.0.total_cmp(&b.0) {
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Equal => {
            if a.1 <= b.1 {
                a
            } else {
                b
            }
        }
    }
}

/// Eight independent accumulators so that the compiler vectorises the loop.
fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for lane in 0..8 {
            let d = x[lane] - y[lane];
            acc[lane] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

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
    crate::linalg::matmul(rows, &matrix, &mut out, n, dim, PROJECTION_DIM);
    out
}

/// The selected rows, in selection order.
pub(crate) fn gather_rows(rows: &[f32], dim: usize, indices: &[usize]) -> Vec<f32> {
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

    #[test]
    fn split_over_workers_it_picks_what_a_plain_loop_picks() {
        let (dim, n, count) = (8, PARALLEL_ROWS + 1000, 40);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let rows: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let fast = greedy_coreset(&rows, dim, count, 9);
        let mut naive = vec![ChaCha8Rng::seed_from_u64(9 ^ 0x5eed).random_range(0..n)];
        let mut nearest = vec![f32::INFINITY; n];
        while naive.len() < count {
            let c = &rows[naive[naive.len() - 1] * dim..][..dim];
            for (i, near) in nearest.iter_mut().enumerate() {
                *near = near.min(squared_distance(&rows[i * dim..][..dim], c));
            }
            let far = (0..n).fold(0, |b, i| if nearest[i] > nearest[b] { i } else { b });
            naive.push(far);
        }
        assert_eq!(fast, naive);
    }
}
