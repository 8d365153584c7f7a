//! Commands that make a bank and use it off the line: `fit`, `score`, `inspect`, `bank merge`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use ucad::backbone::colour::image_colours;
use ucad::backbone::extract::extract_features;
use ucad::backbone::Preprocessor;
use ucad::bank::format::load_for_backbone;
use ucad::bank::{Bank, Capacity};
use ucad::data::dataset::TaskData;
use ucad::data::folder::{list_images, load_rgb};
use ucad::detect::{Detector, Judgement};
use ucad::fit::expected::expected_at_threshold;
use ucad::fit::learner::PromptSummary;
use ucad::fit::report::fit_report;
use ucad::render::overlay::{self, FrameMap, Verdict};

use super::args::{BackboneArg, FitParamsArgs};
use super::learner::LearnerArgs;
use super::{arithmetic_for, Context};

#[derive(clap::Args)]
pub struct FitArgs {
    #[command(flatten)]
    backbone: BackboneArg,
    /// The bank to append to (created when missing).
    #[arg(long)]
    bank: PathBuf,
    /// The product's name.
    #[arg(long)]
    task: String,
    /// A folder of normal images of the product.
    #[arg(long)]
    train: PathBuf,
    #[command(flatten)]
    params: FitParamsArgs,
    #[command(flatten)]
    learner: LearnerArgs,
    /// Also write an HTML page with the held-out normal scores, the drawn defects' scores and the
    /// threshold between them.
    #[arg(long)]
    report: Option<PathBuf>,
}

impl FitArgs {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let params = self.params.params()?;
        let arithmetic = arithmetic_for(ctx.runtime.precision, &self.bank);
        let backbone = ctx.load_backbone_as(&self.backbone.backbone, arithmetic)?;
        // Never --allow-precision-mismatch here: a bank holds features of one arithmetic.
        let mut bank = if self.bank.exists() {
            load_for_backbone(&self.bank, &backbone.spec())
                .context("fit appends only to a bank of its own precision")?
        } else {
            Bank::for_backbone(&backbone.spec())
        };
        let images = list_images(&self.train)?;
        let start = Instant::now();
        let learner = self.learner.learner(ctx, &backbone, params.seed)?;
        let plain = extract_features(&backbone, &images, &format!("{}: features", self.task))?;
        let colours = image_colours(&backbone.meta, &images, |p| load_rgb(p))?;
        let count = images.len();
        let data = TaskData {
            name: self.task.clone(),
            train: images,
            test: Vec::new(),
        };
        let learned = learner.learn(&backbone, &data, &plain, &colours, &params)?;
        if let Some(prompt) = &learned.prompt {
            print_prompt(prompt);
        }
        let fit_s = start.elapsed().as_secs_f64();
        bank.append(learned.task)?;
        bank.save(&self.bank)?;
        println!(
            "fitted {} on {count} images in {fit_s:.1} s; {} now holds {} task(s), version {}",
            self.task,
            self.bank.display(),
            bank.tasks.len(),
            bank.version
        );
        let task = bank.tasks.last().expect("the task just appended");
        let expected = expected_at_threshold(&backbone, task, &data.train, &params)
            .context("the fit is saved, but its escapes could not be estimated")?;
        println!("threshold {:.4}: {expected}", task.threshold);
        println!("{}", expected.placement());
        if let Some(report) = &self.report {
            ucad::fsutil::write_atomic(report, fit_report(&self.task, &expected).as_bytes())?;
            println!("report written to {}", report.display());
        }
        Ok(())
    }
}

fn print_prompt(p: &PromptSummary) {
    println!(
        "prompt for {}: {:.1} s on {} images ({} held out), epoch {} of {} kept, held-out SCL loss {:.4} → {:.4}",
        p.task, p.train_s, p.train_images, p.held_images, p.best_epoch, p.epochs, p.initial_held_loss, p.best_held_loss
    );
}

#[derive(clap::Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    backbone: BackboneArg,
    #[arg(long)]
    bank: PathBuf,
    /// Write a picture per image here: the image beside its anomaly map, outline and verdict.
    #[arg(long)]
    heatmaps: Option<PathBuf>,
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

impl ScoreArgs {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let arithmetic = arithmetic_for(ctx.runtime.precision, &self.bank);
        let backbone = ctx.load_backbone_as(&self.backbone.backbone, arithmetic)?;
        let spec = backbone
            .spec()
            .allowing_precision_mismatch(ctx.runtime.allow_precision_mismatch);
        let detector = Detector::new(&load_for_backbone(&self.bank, &spec)?)?;
        let mut pre = Preprocessor::new(&backbone.meta);
        for path in &self.images {
            let image = load_rgb(path)?;
            let judgement = detector.judge_image(&backbone, &pre.tensor(&image)?, None, &mut |_| {})?;
            println!("{}: {}", path.display(), describe(&detector, &judgement));
            if let Some(dir) = &self.heatmaps {
                let relative: Vec<f32> = detector.tasks()[judgement.task]
                    .relative(&judgement.patch_scores)
                    .collect();
                let map = FrameMap::new(
                    &relative,
                    pre.geometry(image.width(), image.height())?,
                    judgement.threshold,
                )?;
                let verdict = Verdict::of(&detector, &judgement);
                overlay::save(&dir.join(picture_name(path)), &image, &map, &verdict)?;
            }
        }
        Ok(())
    }
}

/// `scratch_000.png` for `…/scratch/000.png`: images of one name in different folders (test
/// sets keep one folder per defect) get pictures of different names.
fn picture_name(path: &std::path::Path) -> String {
    let name = |p: Option<&std::path::Path>| p.and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned());
    match (name(path.parent()), name(Some(path))) {
        (Some(folder), Some(stem)) => format!("{folder}_{stem}.png"),
        (None, Some(stem)) => format!("{stem}.png"),
        _ => "image.png".into(),
    }
}

/// A judgement as `ucad score` prints it: task, routing, score against threshold, decision.
fn describe(detector: &Detector, j: &Judgement) -> String {
    let decision = match (j.unknown, j.rejected()) {
        (true, _) => "REJECT (unknown product)",
        (false, true) => "REJECT",
        (false, false) => "pass",
    };
    // Without a first guess every image is routed.
    let (distance, margin) = j
        .routing
        .as_ref()
        .map_or((f32::NAN, f32::NAN), |r| (r.distance, r.margin));
    format!(
        "{} {} (normalised routing distance {distance:.3}, margin {margin:.3}) score {:.4} threshold {:.4} {decision}",
        if j.unknown { "nearest task" } else { "task" },
        detector.tasks()[j.task].name,
        j.score,
        j.threshold
    )
}

#[derive(clap::Args)]
pub struct InspectArgs {
    bank: PathBuf,
}

impl InspectArgs {
    pub fn execute(self) -> Result<()> {
        let bank = Bank::load(&self.bank)?;
        print!("{}: {bank}", self.bank.display());
        Ok(())
    }
}

#[derive(clap::Subcommand)]
pub enum BankAction {
    /// One bank from banks fitted separately with the same backbone (say, one `ucad fit` job per
    /// product): their tasks in the order given, the same as fitting them in sequence in that
    /// order. Refuses banks of another backbone, feature size or arithmetic, a task name twice and
    /// a merged bank beyond the capacity.
    Merge(MergeArgs),
}

impl BankAction {
    pub fn execute(self) -> Result<()> {
        match self {
            BankAction::Merge(a) => a.execute(),
        }
    }
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// The merged bank: a new file.
    out: PathBuf,
    /// The banks, in learning order.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The merged bank's version (default: the sum of the inputs'). Devices refuse a version not
    /// above the one they run: a merge of refitted products needs a version above it.
    #[arg(long)]
    version: Option<u64>,
    /// The devices' `[bank] capacity_tasks`.
    #[arg(long, default_value_t = Capacity::DEFAULT.tasks)]
    capacity_tasks: usize,
    /// The devices' `[bank] capacity_task_kib`.
    #[arg(long, default_value_t = Capacity::DEFAULT.bytes_per_task >> 10)]
    capacity_task_kib: usize,
}

impl MergeArgs {
    fn execute(self) -> Result<()> {
        anyhow::ensure!(
            !self.out.exists(),
            "{} exists: merge into a new file (the inputs stay as they are)",
            self.out.display()
        );
        let inputs = (self.inputs.iter())
            .map(|path| Ok((path.display().to_string(), Bank::load(path)?)))
            .collect::<Result<Vec<_>>>()?;
        let capacity = Capacity {
            tasks: self.capacity_tasks,
            bytes_per_task: self.capacity_task_kib.saturating_mul(1024),
        };
        let merged = ucad::bank::merge::merge(&inputs, capacity, self.version)?;
        merged.save(&self.out)?;
        let names: Vec<&str> = merged.tasks.iter().map(|t| t.name.as_str()).collect();
        println!(
            "merged {} bank(s) into {}: tasks {} in this order, version {}",
            inputs.len(),
            self.out.display(),
            names.join(", "),
            merged.version
        );
        Ok(())
    }
}
