//! A task's principal subspace (PCA of its own training features), which stores knowledge rows
//! in fewer dimensions. A query keeps what the subspace drops as a residual, so the distance
//! from a query x to a stored row y is exact to the point y stands for, μ + Cᵀy:
//! ‖x − μ − Cᵀy‖² = ‖C(x − μ) − y‖² + (‖x − μ‖² − ‖C(x − μ)‖²), C with orthonormal rows.

use anyhow::{ensure, Result};
use nalgebra::{DMatrix, SymmetricEigen};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::rows::{Precision, Rows};
use crate::linalg::{clamp_squared_distance, matmul};

/// Rows the covariance is estimated from (a seeded sample when there are more).
const COVARIANCE_ROWS: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// Mean of the training features, [in_dim].
    pub mean: Vec<f32>,
    /// Principal directions as rows, [out_dim, in_dim], largest variance first.
    pub components: Rows,
}

/// Rows mapped into a subspace: coefficients [m, out_dim] and each row's squared distance to
/// the subspace.
pub(crate) struct Projected {
    pub coefficients: Vec<f32>,
    pub residuals: Vec<f32>,
}

impl Projection {
    /// PCA of row-major [n, dim] `rows`, keeping `out_dim` directions stored at `precision`.
    pub fn fit(rows: &[f32], dim: usize, out_dim: usize, precision: Precision, seed: u64) -> Projection {
        assert!(
            out_dim >= 1 && out_dim <= dim,
            "cannot keep {out_dim} of {dim} dimensions"
        );
        let sample = sample_rows(rows, dim, seed);
        let n = sample.len() / dim;
        let mut mean = vec![0f64; dim];
        for row in sample.chunks(dim) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += *v as f64 / n as f64;
            }
        }
        let mean: Vec<f32> = mean.into_iter().map(|m| m as f32).collect();
        let centred: Vec<f32> = sample
            .chunks(dim)
            .flat_map(|row| row.iter().zip(&mean).map(|(v, m)| v - m))
            .collect();
        let eigen = SymmetricEigen::new(covariance(&centred, dim));
        let mut order: Vec<usize> = (0..dim).collect();
        order.sort_by(|a, b| eigen.eigenvalues[*b].total_cmp(&eigen.eigenvalues[*a]));
        let components: Vec<f32> = order[..out_dim]
            .iter()
            .flat_map(|&c| {
                eigen
                    .eigenvectors
                    .column(c)
                    .iter()
                    .map(|v| *v as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        Projection {
            mean,
            components: Rows::new(dim, components, precision),
        }
    }

    pub(crate) fn in_dim(&self) -> usize {
        self.mean.len()
    }

    pub(crate) fn out_dim(&self) -> usize {
        self.components.len()
    }

    pub fn bytes(&self) -> usize {
        self.mean.len() * 4 + self.components.bytes()
    }
}

/// A projection decoded once for applying to every query.
pub(crate) struct ProjectionIndex {
    mean: Vec<f32>,
    /// Cᵀ, row-major [in_dim, out_dim].
    transposed: Vec<f32>,
    out_dim: usize,
}

impl ProjectionIndex {
    pub fn new(projection: &Projection) -> Result<ProjectionIndex> {
        let (in_dim, out_dim) = (projection.in_dim(), projection.out_dim());
        ensure!(
            projection.components.is_consistent() && projection.components.dim() == in_dim && out_dim >= 1,
            "a projection of {out_dim} rows of dim {} does not map {in_dim} dimensions",
            projection.components.dim()
        );
        let components = projection.components.to_f32();
        let transposed = (0..in_dim * out_dim)
            .map(|i| components[(i % out_dim) * in_dim + i / out_dim])
            .collect();
        Ok(ProjectionIndex {
            mean: projection.mean.clone(),
            transposed,
            out_dim,
        })
    }

    /// Maps row-major rows of the projection's input dim.
    pub(crate) fn apply(&self, rows: &[f32]) -> Result<Projected> {
        let dim = self.mean.len();
        ensure!(
            rows.len() % dim == 0,
            "{} values are not rows of the projection's dim {dim}",
            rows.len()
        );
        let m = rows.len() / dim;
        let centred: Vec<f32> = rows
            .chunks(dim)
            .flat_map(|row| row.iter().zip(&self.mean).map(|(v, m)| v - m))
            .collect();
        let mut coefficients = vec![0f32; m * self.out_dim];
        matmul(&centred, &self.transposed, &mut coefficients, m, dim, self.out_dim);
        let residuals = centred
            .chunks(dim)
            .zip(coefficients.chunks(self.out_dim))
            .map(|(c, y)| clamp_squared_distance(squared_norm(c) - squared_norm(y)))
            .collect();
        Ok(Projected {
            coefficients,
            residuals,
        })
    }
}

fn squared_norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum()
}

fn sample_rows(rows: &[f32], dim: usize, seed: u64) -> Vec<f32> {
    let n = rows.len() / dim;
    if n <= COVARIANCE_ROWS {
        return rows.to_vec();
    }
    let mut chosen = sample(&mut ChaCha8Rng::seed_from_u64(seed), n, COVARIANCE_ROWS).into_vec();
    chosen.sort_unstable();
    chosen
        .iter()
        .flat_map(|&i| rows[i * dim..(i + 1) * dim].iter().copied())
        .collect()
}

/// XᵀX / n of centred row-major [n, dim] rows.
fn covariance(centred: &[f32], dim: usize) -> DMatrix<f64> {
    let n = centred.len() / dim;
    let transposed: Vec<f32> = (0..dim * n).map(|i| centred[(i % n) * dim + i / n]).collect();
    let mut gram = vec![0f32; dim * dim];
    matmul(&transposed, centred, &mut gram, dim, n, dim);
    DMatrix::from_row_iterator(dim, dim, gram.iter().map(|g| *g as f64 / n as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn distances_to_reconstructed_rows_are_exact_and_the_top_direction_is_found() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let dim = 12;
        // Variance mostly along (1, 1, 0, …)/√2, a little in every direction.
        let rows: Vec<f32> = (0..500)
            .flat_map(|_| {
                let t: f32 = rng.random_range(-5.0..5.0);
                let mut r: Vec<f32> = (0..dim).map(|_| rng.random_range(-0.1..0.1)).collect();
                r[0] += t + 2.0;
                r[1] += t;
                r
            })
            .collect();
        let projection = Projection::fit(&rows, dim, 3, Precision::F32, 0);
        let top = projection.components.to_f32();
        assert!((top[0].abs() - 0.5f32.sqrt()).abs() < 0.01 && (top[0] - top[1]).abs() < 0.01);
        let index = ProjectionIndex::new(&projection).unwrap();
        let stored = index.apply(&rows[..dim]).unwrap().coefficients;
        let reconstructed: Vec<f32> = (0..dim)
            .map(|i| projection.mean[i] + (0..3).map(|c| top[c * dim + i] * stored[c]).sum::<f32>())
            .collect();
        let query: Vec<f32> = (0..dim).map(|_| rng.random_range(-3.0..3.0)).collect();
        let q = index.apply(&query).unwrap();
        let via_subspace = stored
            .iter()
            .zip(&q.coefficients)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            + q.residuals[0];
        let direct: f32 = query.iter().zip(&reconstructed).map(|(a, b)| (a - b).powi(2)).sum();
        assert!(
            (via_subspace - direct).abs() < 1e-3 * direct,
            "{via_subspace} vs {direct}"
        );
    }
}
