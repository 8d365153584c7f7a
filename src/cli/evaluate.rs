//! Commands that measure: `eval` (the continual protocol), `bench-bank`, `bench-routing`, and
//! `generate`, which writes the generated products they can run on.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use ucad::backbone::Backbone;
use ucad::data::synthetic::{products, SplitCounts};
use ucad::eval::feature_cache::FeatureCache;
use ucad::eval::html::eval_page;
use ucad::eval::protocol::{self, EvalOptions};
use ucad::eval::report::BackboneInfo;
use ucad::eval::validation_pool::write_pool;
use ucad::eval::{bench_bank, bench_routing};
use ucad::fit::FitParams;

use super::args::{BackboneArg, FitParamsArgs};
use super::learner::LearnerArgs;
use super::Context;

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    backbone: BackboneArg,
    /// Dataset root (MVTec AD layout, or VisA with split_csv/1cls.csv).
    #[arg(long)]
    data: PathBuf,
    /// Tasks in learning order.
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as one self-contained HTML page: settings, final row, accuracy matrices,
    /// per task ROC and PRO curves, score distributions and galleries of the worst cases.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Write a picture of every final-stage test image here: the image beside its anomaly map,
    /// outline and verdict.
    #[arg(long)]
    heatmaps: Option<PathBuf>,
    /// Memory of the upper reference, as a fraction of all training patches.
    #[arg(long, default_value_t = 0.1)]
    reference_fraction: f32,
    /// Keep plain features in this folder between runs (a sweep re-runs no backbone).
    #[arg(long)]
    feature_cache: Option<PathBuf>,
    /// Save the bank of all tasks, which made the report's final decisions, to this file.
    #[arg(long)]
    save_bank: Option<PathBuf>,
    #[command(flatten)]
    params: FitParamsArgs,
    #[command(flatten)]
    learner: LearnerArgs,
}

impl EvalArgs {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let backbone = self.backbone.load(ctx)?;
        let options = EvalOptions {
            fit: self.params.params()?,
            reference_fraction: self.reference_fraction,
            heatmaps: self.heatmaps,
            pictures: self.html.is_some(),
            feature_cache: self.feature_cache,
            save_bank: self.save_bank,
        };
        let start = Instant::now();
        let learner = self.learner.learner(ctx, &backbone, options.fit.seed)?;
        let report = protocol::run(&backbone, &self.data, &self.tasks, &options, learner.as_ref())?;
        print!("{}", report.table());
        println!("eval finished in {:.1} s", start.elapsed().as_secs_f64());
        if let Some(path) = self.json {
            ucad::fsutil::write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
            println!("report written to {}", path.display());
        }
        if let Some(path) = self.html {
            ucad::fsutil::write_atomic(&path, eval_page(&report).as_bytes())?;
            println!("HTML report written to {}", path.display());
        }
        Ok(())
    }
}

/// What the bank and routing benchmarks share.
#[derive(clap::Args)]
pub struct BenchCommonArgs {
    #[command(flatten)]
    backbone: BackboneArg,
    /// Where plain features (and generated products) are kept between runs.
    #[arg(long, default_value = "models/feature-cache")]
    feature_cache: PathBuf,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the results as one self-contained HTML page.
    #[arg(long)]
    html: Option<PathBuf>,
    #[command(flatten)]
    params: FitParamsArgs,
}

impl BenchCommonArgs {
    fn load(&self, ctx: &Context) -> Result<(Backbone, FitParams)> {
        let params = self.params.params()?;
        Ok((self.backbone.load(ctx)?, params))
    }

    /// Prints the run time and writes the JSON report and its page when asked for.
    fn finish(
        &self,
        name: &str,
        start: Instant,
        report: &impl serde::Serialize,
        page: impl FnOnce() -> String,
    ) -> Result<()> {
        println!("{name} finished in {:.1} s", start.elapsed().as_secs_f64());
        if let Some(path) = &self.json {
            ucad::fsutil::write_atomic(path, serde_json::to_string_pretty(report)?.as_bytes())?;
        }
        if let Some(path) = &self.html {
            ucad::fsutil::write_atomic(path, page().as_bytes())?;
        }
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct BenchBankArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    #[command(flatten)]
    common: BenchCommonArgs,
}

impl BenchBankArgs {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let (backbone, params) = self.common.load(ctx)?;
        let start = Instant::now();
        let features = FeatureCache::new(&self.common.feature_cache);
        let points = bench_bank::run(&backbone, &self.data, &self.tasks, &features, &params)?;
        print!("{}", bench_bank::table(&self.tasks, &points, params.task_budget_bytes));
        let page = || {
            bench_bank::html(
                &self.tasks,
                &points,
                params.task_budget_bytes,
                &BackboneInfo::of(&backbone),
            )
        };
        self.common.finish("bench-bank", start, &points, page)
    }
}

#[derive(clap::Args)]
pub struct BenchRoutingArgs {
    #[arg(long, requires = "tasks")]
    data: Option<PathBuf>,
    /// Real sets under --data, spread through the sequence.
    #[arg(long, value_delimiter = ',', requires = "data")]
    tasks: Vec<String>,
    /// Generated products in the sequence.
    #[arg(long, default_value_t = 16)]
    synthetic: usize,
    #[arg(long, default_value_t = 0)]
    synthetic_seed: u64,
    #[arg(long, default_value_t = 256)]
    size: u32,
    #[command(flatten)]
    counts: SplitCountsArgs,
    /// Learning orders, one seeded shuffle each (default: real sets spread through the rest).
    #[arg(long, value_delimiter = ',')]
    order_seeds: Vec<u64>,
    /// Test real sets on held-out training images (for choosing limits), not their test splits.
    #[arg(long)]
    validate: bool,
    #[command(flatten)]
    common: BenchCommonArgs,
}

impl BenchRoutingArgs {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let (backbone, fit) = self.common.load(ctx)?;
        let options = bench_routing::RoutingBenchOptions {
            synthetic: self.synthetic,
            seed: self.synthetic_seed,
            size: self.size,
            counts: self.counts.counts(),
            fit,
            order_seeds: self.order_seeds,
            validate: self.validate,
        };
        let start = Instant::now();
        let real = self.data.as_deref().map(|root| (root, &self.tasks[..]));
        let report = bench_routing::run(&backbone, real, &self.common.feature_cache, &options)?;
        print!("{report}");
        self.common.finish("bench-routing", start, &report, || {
            report.html(&BackboneInfo::of(&backbone))
        })
    }
}

/// Images per split of a generated product.
#[derive(clap::Args)]
pub struct SplitCountsArgs {
    #[arg(long, default_value_t = 40)]
    train: usize,
    #[arg(long, default_value_t = 10)]
    test_good: usize,
    #[arg(long, default_value_t = 10)]
    test_defective: usize,
}

impl SplitCountsArgs {
    fn counts(&self) -> SplitCounts {
        SplitCounts {
            train: self.train,
            test_good: self.test_good,
            test_defective: self.test_defective,
        }
    }
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Folder to write the products into (MVTec AD layout, one folder per product).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 3)]
    products: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 256)]
    size: u32,
    #[command(flatten)]
    counts: SplitCountsArgs,
}

impl GenerateArgs {
    pub fn execute(self) -> Result<()> {
        for product in products(self.products, self.seed) {
            product.write_mvtec(&self.out, self.size, self.counts.counts())?;
            println!("{}", product.name);
        }
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct ValidationPoolArgs {
    /// Dataset root of the real sets.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// An empty folder (or one without these sets) to write the pool into.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl ValidationPoolArgs {
    pub fn execute(self) -> Result<()> {
        let names = write_pool(&self.data, &self.tasks, &self.out, self.seed)?;
        println!(
            "validation sets {} written to {} (test splits not read); e.g. ucad eval --data {} --tasks {}",
            names.join(", "),
            self.out.display(),
            self.out.display(),
            names.join(",")
        );
        Ok(())
    }
}
