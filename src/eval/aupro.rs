//! Exact AUPRO: the area under the per-region overlap (PRO) curve against the pixel false
//! positive rate, integrated up to `max_fpr` (linear between thresholds, interpolated at the
//! cut-off) and divided by `max_fpr`. Regions are the 8-connected components of the masks.

/// False-positive rate up to which the PRO curve is integrated (MVTec AD's standard 0.3).
pub(crate) const AUPRO_MAX_FPR: f64 = 0.3;

/// Region labels of one binary mask (`size`×`size`): 0 for background, 1.. for components.
pub(crate) fn label_regions(mask: &[bool], size: usize) -> (Vec<u32>, u32) {
    let mut labels = vec![0u32; mask.len()];
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        next += 1;
        labels[start] = next;
        stack.push(start);
        while let Some(at) = stack.pop() {
            let (y, x) = ((at / size) as isize, (at % size) as isize);
            for (dy, dx) in [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)] {
                let (ny, nx) = (y + dy, x + dx);
                if ny < 0 || nx < 0 || ny >= size as isize || nx >= size as isize {
                    continue;
                }
                let n = ny as usize * size + nx as usize;
                if mask[n] && labels[n] == 0 {
                    labels[n] = next;
                    stack.push(n);
                }
            }
        }
    }
    (labels, next)
}

/// AUPRO over images given as (anomaly map, ground truth), each `size`×`size`. `None` when there
/// is no defect region or no normal pixel.
pub fn aupro(images: &[(&[f32], &[bool])], size: usize, max_fpr: f64) -> Option<f64> {
    pro(images, size, max_fpr, 2).map(|p| p.aupro)
}

/// AUPRO and the PRO curve it integrates.
pub(crate) struct Pro {
    pub aupro: f64,
    /// (pixel false-positive rate, mean region overlap) from (0, 0) to `max_fpr`: a point each
    /// time the false-positive rate has moved on by `max_fpr / (points − 1)`, enough to draw.
    pub curve: Vec<[f64; 2]>,
}

/// The exact AUPRO (trapezoids between every distinct score, interpolated at `max_fpr`) and
/// about `points` points of its curve.
pub(crate) fn pro(images: &[(&[f32], &[bool])], size: usize, max_fpr: f64, points: usize) -> Option<Pro> {
    // Per pixel: its score and 0 (normal) or 1 + its global region index.
    let mut pixels: Vec<(f32, u32)> = Vec::with_capacity(images.len() * size * size);
    let mut region_sizes: Vec<u64> = Vec::new();
    for (map, mask) in images {
        let (labels, count) = label_regions(mask, size);
        let offset = region_sizes.len() as u32;
        region_sizes.extend(std::iter::repeat_n(0, count as usize));
        for (&score, &label) in map.iter().zip(&labels) {
            let region = if label == 0 { 0 } else { offset + label };
            if region > 0 {
                region_sizes[region as usize - 1] += 1;
            }
            pixels.push((score, region));
        }
    }
    let negatives = pixels.iter().filter(|p| p.1 == 0).count() as f64;
    if region_sizes.is_empty() || negatives == 0.0 {
        return None;
    }
    pixels.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let regions = region_sizes.len() as f64;
    let step = max_fpr / (points.max(2) - 1) as f64;
    let mut curve = vec![[0.0, 0.0]];
    let (mut fpr, mut pro, mut area) = (0f64, 0f64, 0f64);
    let (mut fp, mut overlap) = (0u64, 0f64);
    for group in pixels.chunk_by(|a, b| a.0.to_bits() == b.0.to_bits()) {
        for &(_, region) in group {
            if region == 0 {
                fp += 1;
            } else {
                overlap += 1.0 / region_sizes[region as usize - 1] as f64;
            }
        }
        let (next_fpr, next_pro) = (fp as f64 / negatives, overlap / regions);
        if next_fpr >= max_fpr {
            let t = if next_fpr > fpr {
                (max_fpr - fpr) / (next_fpr - fpr)
            } else {
                0.0
            };
            let at_cut = pro + t * (next_pro - pro);
            area += (max_fpr - fpr) * (pro + at_cut) / 2.0;
            curve.push([max_fpr, at_cut]);
            break;
        }
        area += (next_fpr - fpr) * (pro + next_pro) / 2.0;
        (fpr, pro) = (next_fpr, next_pro);
        if fpr - curve.last().expect("starts with a point")[0] >= step {
            curve.push([fpr, pro]);
        }
    }
    Some(Pro {
        aupro: area / max_fpr,
        curve,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_eight_connected() {
        #[rustfmt::skip]
        let mask = [
            true, false, false,
            false, true, false,
            false, false, true,
        ];
        assert_eq!(label_regions(&mask, 3).1, 1);
        let two = [true, false, true, false, false, false, false, false, false];
        assert_eq!(label_regions(&two, 3).1, 2);
    }

    #[test]
    fn perfect_map_scores_one_and_constant_map_is_hand_computed() {
        let mask = [true, true, false, false];
        let perfect = [1.0, 1.0, 0.0, 0.0];
        assert_eq!(aupro(&[(&perfect, &mask)], 2, 0.3), Some(1.0));
        // All tied: the one threshold jumps from (0, 0) to (1, 1); at FPR 0.3 PRO is 0.3,
        // area = 0.3 · 0.15 / 2 · 2 = 0.045, normalised 0.15.
        let flat = [0.5; 4];
        let got = aupro(&[(&flat, &mask)], 2, 0.3).unwrap();
        assert!((got - 0.15).abs() < 1e-12, "{got}");
    }

    #[test]
    fn regions_weigh_equally_whatever_their_size() {
        // Image 1: a 3-pixel region fully found first; image 2: a 1-pixel region found only
        // after all 4 normal pixels are (FPR 1): the PRO stays 0.5 up to FPR 0.3.
        let (m1, s1) = ([true, true, true, false], [0.9, 0.9, 0.9, 0.5]);
        let (m2, s2) = ([true, false, false, false], [0.0, 0.5, 0.5, 0.5]);
        let got = aupro(&[(&s1, &m1), (&s2, &m2)], 2, 0.3).unwrap();
        assert!((got - 0.5).abs() < 1e-12, "{got}");
    }

    #[test]
    fn undefined_without_regions() {
        let map = [0.1; 4];
        assert_eq!(aupro(&[(&map, &[false; 4])], 2, 0.3), None);
    }

    #[test]
    fn the_curve_keeps_a_bounded_number_of_points_and_ends_at_the_cut_off() {
        let size = 64;
        let mask: Vec<bool> = (0..size * size).map(|i| (i % size) < 8).collect();
        let map: Vec<f32> = (0..size * size)
            .map(|i| ((i * 7919) % 4093) as f32 + if mask[i] { 900.0 } else { 0.0 })
            .collect();
        let full = pro(&[(&map, &mask)], size, 0.3, 2).unwrap();
        let drawn = pro(&[(&map, &mask)], size, 0.3, 11).unwrap();
        assert_eq!(full.aupro, drawn.aupro, "the area does not depend on the points kept");
        assert!(drawn.curve.len() <= 12, "{} points", drawn.curve.len());
        assert_eq!(drawn.curve.last().unwrap()[0], 0.3);
        assert!(drawn.curve.windows(2).all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1]));
    }
}
