//! Exact brute-force nearest neighbours written as one matrix product per query batch:
//! ‖q − b‖² = ‖q‖² + ‖b‖² − 2·q·b.

/// c[m, n] = a[m, k] · b[k, n], row-major.
pub fn matmul(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "matmul operands too small"
    );
    // SAFETY: the asserts above guarantee every index sgemm touches is in bounds.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// Rows searched by distance, with their squared norms precomputed.
#[derive(Debug, Clone)]
pub struct KnnIndex {
    dim: usize,
    rows: Vec<f32>,
    norms: Vec<f32>,
}

impl KnnIndex {
    pub fn new(rows: Vec<f32>, dim: usize) -> KnnIndex {
        assert!(
            dim > 0 && rows.len() % dim == 0 && !rows.is_empty(),
            "an index needs at least one row of dim {dim}"
        );
        let norms = rows.chunks(dim).map(|r| r.iter().map(|v| v * v).sum()).collect();
        KnnIndex { dim, rows, norms }
    }

    pub fn len(&self) -> usize {
        self.norms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.norms.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Squared distances [m, len] from each query row to each indexed row.
    pub fn squared_distances(&self, queries: &[f32]) -> Vec<f32> {
        let (m, n, d) = (queries.len() / self.dim, self.len(), self.dim);
        let mut dots = vec![0f32; m * n];
        // sgemm takes strides, so Bᵀ is read in place: a [d, n] view with row stride 1.
        // SAFETY: the view covers exactly rows[0..n·d].
        unsafe {
            matrixmultiply::sgemm(
                m,
                d,
                n,
                1.0,
                queries.as_ptr(),
                d as isize,
                1,
                self.rows.as_ptr(),
                1,
                d as isize,
                0.0,
                dots.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        for (i, q) in queries.chunks(d).enumerate() {
            let qn: f32 = q.iter().map(|v| v * v).sum();
            for (j, dot) in dots[i * n..(i + 1) * n].iter_mut().enumerate() {
                *dot = (qn + self.norms[j] - 2.0 * *dot).max(0.0);
            }
        }
        dots
    }

    /// For each query: (index of the nearest row, mean L2 distance to its k nearest rows).
    pub fn search(&self, queries: &[f32], k: usize) -> Vec<(usize, f32)> {
        let k = k.clamp(1, self.len());
        let n = self.len();
        let dist = self.squared_distances(queries);
        dist.chunks(n)
            .map(|row| {
                let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
                for (j, d) in row.iter().enumerate() {
                    if best.len() < k || *d < best[best.len() - 1].0 {
                        let at = best.partition_point(|(bd, _)| bd <= d);
                        best.insert(at, (*d, j));
                        best.truncate(k);
                    }
                }
                let mean = best.iter().map(|(d, _)| d.sqrt()).sum::<f32>() / k as f32;
                (best[0].1, mean)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn finds_the_same_neighbours_as_a_naive_loop() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (dim, n, m) = (96, 1500, 64);
        let rows: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let queries: Vec<f32> = (0..m * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let index = KnnIndex::new(rows.clone(), dim);
        for k in [1, 3] {
            let fast = index.search(&queries, k);
            for (q, (nearest, mean)) in queries.chunks(dim).zip(&fast) {
                let mut naive: Vec<(f64, usize)> = rows
                    .chunks(dim)
                    .enumerate()
                    .map(|(j, r)| (q.iter().zip(r).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>(), j))
                    .collect();
                naive.sort_by(|a, b| a.0.total_cmp(&b.0));
                assert_eq!(*nearest, naive[0].1);
                let want = naive[..k].iter().map(|(d, _)| d.sqrt()).sum::<f64>() / k as f64;
                assert!((*mean as f64 - want).abs() < 1e-3 * want.max(1.0), "{mean} vs {want}");
            }
        }
    }
}
