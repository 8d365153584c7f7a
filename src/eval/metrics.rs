//! Threshold-free detection metrics, exact under ties: AUROC (ties count one half), average
//! precision (sklearn's step-wise sum) and the best F1 over thresholds. Each is `None` when it is
//! undefined (no positives, or for AUROC no negatives).

/// At most `most` of a curve's points, evenly spread, the first and the last kept: enough to draw it.
pub(crate) fn thinned(points: &[[f64; 2]], most: usize) -> Vec<[f64; 2]> {
    if points.len() <= most {
        return points.to_vec();
    }
    let step = (points.len() - 1) as f64 / (most - 1) as f64;
    (0..most)
        .map(|i| points[((i as f64 * step).round() as usize).min(points.len() - 1)])
        .collect()
}

/// Positives and negatives at each distinct score, highest score first.
pub(crate) struct TieGroups {
    groups: Vec<(u64, u64)>,
    positives: u64,
    negatives: u64,
}

impl TieGroups {
    pub fn new(scores: &[f32], labels: &[bool]) -> TieGroups {
        assert_eq!(scores.len(), labels.len(), "one label per score");
        let mut pairs: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
        pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let mut groups: Vec<(u64, u64)> = Vec::new();
        let mut last = None;
        for (score, positive) in pairs {
            if last != Some(score.to_bits()) {
                groups.push((0, 0));
                last = Some(score.to_bits());
            }
            let group = groups.last_mut().expect("pushed above");
            if positive {
                group.0 += 1;
            } else {
                group.1 += 1;
            }
        }
        let positives = groups.iter().map(|g| g.0).sum();
        let negatives = groups.iter().map(|g| g.1).sum();
        TieGroups {
            groups,
            positives,
            negatives,
        }
    }

    /// Area under the ROC curve (trapezoids between tie groups).
    pub(crate) fn auroc(&self) -> Option<f64> {
        if self.positives == 0 || self.negatives == 0 {
            return None;
        }
        let (mut tp, mut area) = (0u64, 0f64);
        for &(p, n) in &self.groups {
            area += n as f64 * (tp as f64 + p as f64 / 2.0);
            tp += p;
        }
        Some(area / (self.positives as f64 * self.negatives as f64))
    }

    /// The ROC curve as (false-positive rate, true-positive rate) from (0, 0), a point per tie
    /// group; `None` where AUROC is.
    pub(crate) fn roc(&self) -> Option<Vec<[f64; 2]>> {
        if self.positives == 0 || self.negatives == 0 {
            return None;
        }
        let (mut tp, mut fp) = (0u64, 0u64);
        let mut points = vec![[0.0, 0.0]];
        for &(p, n) in &self.groups {
            (tp, fp) = (tp + p, fp + n);
            points.push([fp as f64 / self.negatives as f64, tp as f64 / self.positives as f64]);
        }
        Some(points)
    }

    /// Σ (recall_k − recall_{k−1}) · precision_k over thresholds at each tie group.
    pub(crate) fn average_precision(&self) -> Option<f64> {
        if self.positives == 0 {
            return None;
        }
        let (mut tp, mut fp, mut ap) = (0u64, 0u64, 0f64);
        for &(p, n) in &self.groups {
            tp += p;
            fp += n;
            ap += p as f64 / self.positives as f64 * (tp as f64 / (tp + fp) as f64);
        }
        Some(ap)
    }

    /// The best F1 over all thresholds.
    pub fn f1_max(&self) -> Option<f64> {
        if self.positives == 0 {
            return None;
        }
        let (mut tp, mut fp, mut best) = (0u64, 0u64, 0f64);
        for &(p, n) in &self.groups {
            tp += p;
            fp += n;
            best = best.max(2.0 * tp as f64 / (2 * tp + fp + (self.positives - tp)) as f64);
        }
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) {
        let a = a.expect("defined");
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn perfect_and_reversed_rankings() {
        let labels = [false, false, true, true];
        let g = TieGroups::new(&[0.1, 0.2, 0.8, 0.9], &labels);
        close(g.auroc(), 1.0);
        close(g.average_precision(), 1.0);
        close(g.f1_max(), 1.0);
        close(TieGroups::new(&[0.9, 0.8, 0.2, 0.1], &labels).auroc(), 0.0);
    }

    #[test]
    fn hand_computed_case_with_a_tie() {
        // Sorted: 0.9 (+), 0.5 (+ and −, tied), 0.3 (−), 0.1 (+).
        let scores = [0.9, 0.5, 0.5, 0.3, 0.1];
        let labels = [true, true, false, false, true];
        let g = TieGroups::new(&scores, &labels);
        // Pairs (pos, neg) = 3·2 = 6; wins: 0.9 beats both (2), tied 0.5 beats 0.3 (1) and ties 0.5 (½),
        // 0.1 beats none: 3.5 / 6.
        close(g.auroc(), 3.5 / 6.0);
        // Thresholds: {0.9}: R 1/3, P 1; {0.5}: R 2/3, P 2/3; {0.3}: R 2/3; {0.1}: R 1, P 3/5.
        close(
            g.average_precision(),
            1.0 / 3.0 + (1.0 / 3.0) * (2.0 / 3.0) + (1.0 / 3.0) * 0.6,
        );
        // F1 at {0.5}: 2·2 / (4 + 1 + 1) = 2/3; at {0.1}: 6 / (6 + 2) = 3/4.
        close(g.f1_max(), 0.75);
    }

    #[test]
    fn all_equal_scores_are_chance() {
        let g = TieGroups::new(&[0.5; 4], &[true, false, false, true]);
        close(g.auroc(), 0.5);
        close(g.average_precision(), 0.5);
        close(g.f1_max(), 2.0 / 3.0);
    }

    #[test]
    fn undefined_without_positives_or_negatives() {
        let g = TieGroups::new(&[0.1, 0.2], &[false, false]);
        assert_eq!(g.auroc(), None);
        assert_eq!(g.average_precision(), None);
        assert_eq!(g.f1_max(), None);
        assert_eq!(TieGroups::new(&[0.1, 0.2], &[true, true]).auroc(), None);
    }
}
