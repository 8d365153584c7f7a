//! Exact brute-force nearest neighbours written as one matrix product per query batch:
//! ‖q − b‖² = ‖q‖² + ‖b‖² − 2·q·b.

use anyhow::{ensure, Result};

use crate::bank::Rows;
use crate::linalg::clamp_squared_distance;

/// Stored rows searched by distance, decoded a tile at a time, with their squared norms
/// precomputed.
#[derive(Debug, Clone)]
pub(crate) struct KnnIndex {
    rows: Rows,
    norms: Vec<f32>,
}

/// Rows decoded and multiplied at once: large enough for sgemm to run at speed, small enough
/// to stay in cache.
const TILE_ROWS: usize = 256;

impl KnnIndex {
    pub fn new(rows: Rows) -> Result<KnnIndex> {
        ensure!(
            rows.is_consistent() && !rows.is_empty(),
            "an index needs at least one row, and rows of their declared dim {}",
            rows.dim()
        );
        let mut buffer = Vec::new();
        let norms = (0..rows.len())
            .step_by(TILE_ROWS)
            .flat_map(|start| {
                let tile = rows.tile(start..(start + TILE_ROWS).min(rows.len()), &mut buffer);
                tile.chunks(rows.dim())
                    .map(|r| r.iter().map(|v| v * v).sum())
                    .collect::<Vec<f32>>()
            })
            .collect();
        Ok(KnnIndex { rows, norms })
    }

    pub fn len(&self) -> usize {
        self.norms.len()
    }

    pub fn dim(&self) -> usize {
        self.rows.dim()
    }

    /// For each query row: the mean L2 distance to its k nearest stored rows, with
    /// `residuals[i]` (a squared distance the stored rows cannot see) added to each squared
    /// distance of query i before the root. A distance that cannot be computed (NaN) counts
    /// as infinitely far, never as near.
    pub fn search(&self, queries: &[f32], k: usize, residuals: Option<&[f32]>) -> Result<Vec<f32>> {
        let (d, n) = (self.dim(), self.len());
        ensure!(
            queries.len() % d == 0,
            "{} query values are not rows of the index's dim {d}",
            queries.len()
        );
        let m = queries.len() / d;
        if let Some(r) = residuals {
            ensure!(r.len() == m, "{} residuals for {m} queries", r.len());
        }
        let k = k.clamp(1, n);
        let query_norms: Vec<f32> = queries.chunks(d).map(|q| q.iter().map(|v| v * v).sum()).collect();
        let mut nearest = vec![f32::INFINITY; m * k];
        let (mut buffer, mut dots) = (Vec::new(), vec![0f32; m * TILE_ROWS]);
        for start in (0..n).step_by(TILE_ROWS) {
            let end = (start + TILE_ROWS).min(n);
            let tile = self.rows.tile(start..end, &mut buffer);
            let width = end - start;
            // sgemm takes strides, so the tile's transpose is read in place: a [d, width] view.
            // SAFETY: the view covers exactly tile[0..width·d]; dots holds m·width values.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    d,
                    width,
                    1.0,
                    queries.as_ptr(),
                    d as isize,
                    1,
                    tile.as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    dots.as_mut_ptr(),
                    width as isize,
                    1,
                );
            }
            for (i, best) in nearest.chunks_mut(k).enumerate() {
                for (dot, norm) in dots[i * width..(i + 1) * width].iter().zip(&self.norms[start..end]) {
                    keep_smallest(best, clamp_squared_distance(query_norms[i] + norm - 2.0 * dot));
                }
            }
        }
        Ok(nearest
            .chunks(k)
            .enumerate()
            .map(|(i, best)| {
                let residual = residuals.map_or(0.0, |r| clamp_squared_distance(r[i]));
                best.iter().map(|d2| (d2 + residual).sqrt()).sum::<f32>() / k as f32
            })
            .collect())
    }
}

/// Inserts `value` into the ascending `best` if it is smaller than its largest entry.
fn keep_smallest(best: &mut [f32], value: f32) {
    let last = best.len() - 1;
    if value >= best[last] {
        return;
    }
    let mut at = last;
    while at > 0 && best[at - 1] > value {
        best[at] = best[at - 1];
        at -= 1;
    }
    best[at] = value;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::Precision;
    use rand::{Rng, SeedableRng};

    #[test]
    fn finds_the_same_neighbours_as_a_naive_loop_over_the_stored_rows() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        // More rows than a tile, and not a multiple of it.
        let (dim, n, m) = (96, 1500, 64);
        let rows: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let queries: Vec<f32> = (0..m * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let residuals: Vec<f32> = (0..m).map(|_| rng.random_range(0.0..2.0)).collect();
        for precision in [Precision::F32, Precision::I8] {
            let stored = Rows::new(dim, rows.clone(), precision);
            let decoded = stored.to_f32();
            let index = KnnIndex::new(stored).unwrap();
            for (k, residuals) in [(1, None), (3, Some(&residuals[..]))] {
                let fast = index.search(&queries, k, residuals).unwrap();
                for (i, (q, mean)) in queries.chunks(dim).zip(&fast).enumerate() {
                    let offset = residuals.map_or(0.0, |r| r[i] as f64);
                    let mut naive: Vec<f64> = decoded
                        .chunks(dim)
                        .map(|r| q.iter().zip(r).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>())
                        .collect();
                    naive.sort_by(f64::total_cmp);
                    let want = naive[..k].iter().map(|d| (d + offset).sqrt()).sum::<f64>() / k as f64;
                    assert!((*mean as f64 - want).abs() < 1e-3 * want.max(1.0), "{mean} vs {want}");
                }
            }
            assert!(
                index.search(&queries[..dim + 1], 1, None).is_err(),
                "a partial query row"
            );
            assert!(
                index.search(&queries, 1, Some(&residuals[1..])).is_err(),
                "residuals short"
            );
        }
    }

    #[test]
    fn an_empty_index_is_refused_and_an_overflowing_distance_is_far_not_near() {
        assert!(KnnIndex::new(Rows::new(2, vec![], Precision::F32)).is_err());
        // 1e38 from 2e38: every term overflows, ∞ + ∞ − ∞ is NaN; the distance is 1e38.
        let index = KnnIndex::new(Rows::new(1, vec![2e38], Precision::F32)).unwrap();
        assert_eq!(index.search(&[1e38], 1, None).unwrap(), [f32::INFINITY]);
        assert_eq!(clamp_squared_distance(-1e-6), 0.0);
    }
}
