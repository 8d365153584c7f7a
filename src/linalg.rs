//! Dense linear algebra the layers above share: one matrix product (through the matrixmultiply
//! crate's sgemm), the clamp of distances computed through it, and symmetric int8 per column
//! (a bank's rows, an exported backbone's weights).

/// c[m, n] = a[m, k] · b[k, n], row-major.
pub(crate) fn matmul(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
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

/// A computed squared distance: rounding may take it below zero; overflow (∞ − ∞) makes it
/// NaN, which `max` would turn into 0, a perfect match.
pub(crate) fn clamp_squared_distance(d2: f32) -> f32 {
    if d2.is_nan() {
        f32::INFINITY
    } else {
        d2.max(0.0)
    }
}

/// Symmetric int8 codes of a row-major matrix with `cols` columns, one scale per column: each
/// column's largest magnitude maps to 127 (scale 1 for an all-zero column). Returns (codes,
/// scales).
pub(crate) fn quantise_columns(data: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut scales = vec![0f32; cols];
    for row in data.chunks(cols) {
        for (s, v) in scales.iter_mut().zip(row) {
            *s = s.max(v.abs());
        }
    }
    for s in &mut scales {
        *s = if *s > 0.0 { *s / 127.0 } else { 1.0 };
    }
    let codes = data
        .chunks(cols)
        .flat_map(|row| {
            row.iter()
                .zip(&scales)
                .map(|(v, s)| (v / s).round().clamp(-127.0, 127.0) as i8)
        })
        .collect();
    (codes, scales)
}
