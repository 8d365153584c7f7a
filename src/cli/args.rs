//! Flag groups more than one command takes.

use anyhow::Result;
use ucad::backbone::{ArithmeticChoice, Backbone};
use ucad::bank::Precision;
use ucad::fit::FitParams;
use ucad::runtime::config::RuntimeConfig;

use super::Context;

/// How the backbone runs: `[runtime]` of a config, for every command.
#[derive(clap::Args)]
pub struct RuntimeArgs {
    /// Cores a backbone pass spreads over, and batch work too; 0 = all. `run` takes
    /// `[runtime] threads` from its config unless this is given.
    #[arg(long, global = true, value_parser = threads_arg)]
    threads: Option<usize>,
    /// What the backbone computes in: auto (f16 where the CPU has FP16 arithmetic, else f32),
    /// f32 or f16. `run` takes `[runtime] precision` from its config unless this is given. (Not
    /// `--precision` of `fit` and `eval`: how a bank stores its rows.)
    #[arg(long, global = true, value_enum)]
    compute_precision: Option<ArithmeticChoice>,
    /// Use a bank fitted in another precision than the backbone computes in (`run`: also
    /// `[runtime] allow_precision_mismatch`); re-fitting the bank is the better way out.
    #[arg(long, global = true)]
    allow_precision_mismatch: bool,
}

impl RuntimeArgs {
    /// `[runtime]` as the flags set it, over `config`'s.
    pub fn over(&self, config: RuntimeConfig) -> RuntimeConfig {
        RuntimeConfig {
            threads: self.threads.unwrap_or(config.threads),
            precision: self.compute_precision.unwrap_or(config.precision),
            allow_precision_mismatch: self.allow_precision_mismatch || config.allow_precision_mismatch,
        }
    }
}

fn threads_arg(value: &str) -> Result<usize, String> {
    let threads: usize = value.parse().map_err(|e| format!("{e}"))?;
    ucad::parallel::resolve(threads).map_err(|e| e.to_string())?;
    Ok(threads)
}

/// The backbone a command runs.
#[derive(clap::Args)]
pub struct BackboneArg {
    /// A file, `default`, or an arch name (add `.int8` for the int8 export).
    #[arg(long, default_value = "default")]
    pub backbone: String,
}

impl BackboneArg {
    /// The backbone, computing as `--compute-precision` says.
    pub fn load(&self, ctx: &Context) -> Result<Backbone> {
        ctx.load_backbone(&self.backbone)
    }
}

/// The backbone a bank is checked against before it leaves for a device.
#[derive(clap::Args)]
pub struct BankBackboneArg {
    /// A file, `default` or an arch name; omitted: the model cache's backbone with the bank's
    /// sha256.
    #[arg(long)]
    pub backbone: Option<String>,
}

/// How a task is learned (shared by `fit` and `eval`).
#[derive(clap::Args)]
pub struct FitParamsArgs {
    #[arg(long, default_value_t = 196)]
    key_rows: usize,
    /// Knowledge coreset as a fraction of the training patches (cut to the task budget).
    #[arg(long, default_value_t = 0.1)]
    knowledge_fraction: f32,
    /// Dimensions knowledge rows keep at most (PCA of the task's own features); 0 keeps all.
    #[arg(long, default_value_t = 128)]
    knowledge_dims: usize,
    /// Most kB (1000 bytes) one task may hold: key, projection and knowledge.
    #[arg(long, default_value_t = 2000)]
    task_budget_kb: usize,
    /// Nearest neighbours averaged into a patch score.
    #[arg(long, default_value_t = 1)]
    k: usize,
    /// Fraction of the training images held out to calibrate the threshold.
    #[arg(long, default_value_t = 0.2)]
    holdout: f32,
    /// False-reject rate the threshold is set for (on held-out normal images).
    #[arg(long, default_value_t = 0.01)]
    false_reject: f32,
    /// Storage of key and knowledge rows (int8: one scale per column).
    #[arg(long, value_enum, default_value = "i8")]
    precision: Precision,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl FitParamsArgs {
    /// The parameters, each checked (errors name the flag).
    pub fn params(&self) -> Result<FitParams> {
        let params = FitParams {
            key_rows: self.key_rows,
            knowledge_fraction: self.knowledge_fraction,
            knowledge_dims: self.knowledge_dims,
            task_budget_bytes: self.task_budget_kb.saturating_mul(1000),
            k: self.k,
            holdout: self.holdout,
            target_false_reject: self.false_reject,
            precision: self.precision,
            seed: self.seed,
        };
        params.check()?;
        Ok(params)
    }
}
