//! What a fit is asked for: rows, budget, hold-out share, false-reject target, precision.

use anyhow::{ensure, Result};

use crate::bank::Precision;

#[derive(Debug, Clone)]
pub struct FitParams {
    /// Rows in the routing key (UCAD: 196).
    pub key_rows: usize,
    /// Knowledge coreset size as a fraction of the memory images' patches (PatchCore: 0.1).
    pub knowledge_fraction: f32,
    /// Dimensions knowledge rows keep at most (a PCA of the task's features); 0 keeps all.
    pub knowledge_dims: usize,
    /// Most bytes a task may hold (key, projection, knowledge): the coreset is cut to fit.
    pub task_budget_bytes: usize,
    pub k: usize,
    /// Fraction of the normal training images held out to calibrate the threshold.
    pub holdout: f32,
    pub target_false_reject: f32,
    pub precision: Precision,
    pub seed: u64,
}

impl FitParams {
    /// Every parameter finite and in range; errors name the command-line flag that sets it
    /// (`fit`, `eval` and the benchmarks share them).
    pub fn check(&self) -> Result<()> {
        ensure!(self.key_rows >= 1, "--key-rows must be at least 1");
        ensure!(
            self.knowledge_fraction > 0.0 && self.knowledge_fraction <= 1.0,
            "--knowledge-fraction is {}; it must be in (0, 1]",
            self.knowledge_fraction
        );
        ensure!(self.task_budget_bytes > 0, "--task-budget-kb must be at least 1");
        ensure!(self.k >= 1, "--k must be at least 1");
        ensure!(
            (0.0..1.0).contains(&self.holdout),
            "--holdout is {}; it must be in [0, 1)",
            self.holdout
        );
        ensure!(
            self.target_false_reject > 0.0 && self.target_false_reject <= MAX_FALSE_REJECT,
            "--false-reject is {}; it must be in (0, {MAX_FALSE_REJECT}] (no threshold promises no false rejects)",
            self.target_false_reject
        );
        Ok(())
    }
}

/// The largest target false-reject rate a threshold is set for.
const MAX_FALSE_REJECT: f32 = 0.5;

impl Default for FitParams {
    fn default() -> FitParams {
        FitParams {
            key_rows: 196,
            knowledge_fraction: 0.1,
            knowledge_dims: 128,
            task_budget_bytes: 2_000_000,
            k: 1,
            holdout: 0.2,
            target_false_reject: 0.01,
            precision: Precision::I8,
            seed: 0,
        }
    }
}
