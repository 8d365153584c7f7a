//! Continual-learning summaries of a lower-triangular accuracy matrix a[t][j] (after learning
//! task t, measured on task j ≤ t): forgetting (Chaudhry et al.) and backward transfer.

/// a[t][j] for j ≤ t; `None` where the metric is undefined.
pub(crate) type Matrix = Vec<Vec<Option<f64>>>;

/// FM = mean over j < T of (max_{j ≤ l < T} a[l][j] − a[T][j]), T the last task; `None` with
/// a single task.
pub fn forgetting(a: &Matrix) -> Option<f64> {
    let last = a.len().checked_sub(1)?;
    mean((0..last).filter_map(|j| {
        let best = (j..last).filter_map(|l| a[l][j]).reduce(f64::max)?;
        Some(best - a[last][j]?)
    }))
}

/// BWT = mean over j < T of (a[T][j] − a[j][j]).
pub(crate) fn backward_transfer(a: &Matrix) -> Option<f64> {
    let last = a.len().checked_sub(1)?;
    mean((0..last).filter_map(|j| Some(a[last][j]? - a[j][j]?)))
}

/// Mean of the final row (all tasks after the last one is learned).
pub(crate) fn final_mean(a: &Matrix) -> Option<f64> {
    mean(a.last()?.iter().flatten().copied())
}

pub fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    (count > 0).then(|| sum / count as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_forgetting_and_transfer() {
        let a: Matrix = vec![
            vec![Some(0.9)],
            vec![Some(0.95), Some(0.8)],
            vec![Some(0.85), Some(0.8), Some(0.7)],
        ];
        // Task 0: best before the end 0.95, final 0.85 → 0.10; task 1: 0.8 → 0.8 → 0.
        assert!((forgetting(&a).unwrap() - 0.05).abs() < 1e-12);
        // Task 0: 0.85 − 0.9; task 1: 0.8 − 0.8.
        assert!((backward_transfer(&a).unwrap() + 0.025).abs() < 1e-12);
        assert!((final_mean(&a).unwrap() - 2.35 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn one_task_has_no_forgetting_to_measure() {
        let a: Matrix = vec![vec![Some(0.9)]];
        assert_eq!(forgetting(&a), None);
        assert_eq!(backward_transfer(&a), None);
    }
}
