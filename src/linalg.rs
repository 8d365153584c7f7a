//! Dense linear algebra the bank and the kNN search share: one matrix product (through the
//! matrixmultiply crate's sgemm) and the clamp of distances computed through it.

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

/// A computed squared distance: rounding may take it below zero; overflow (∞ − ∞) makes it
/// NaN, which `max` would turn into 0, a perfect match.
pub fn squared_distance(d2: f32) -> f32 {
    if d2.is_nan() {
        f32::INFINITY
    } else {
        d2.max(0.0)
    }
}
