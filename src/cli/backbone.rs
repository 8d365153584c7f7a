//! Commands about the backbone: `models`, `import-weights`, `export`, `features`,
//! `check-parity`, `bench-backbone`, `backbone-cost`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use image::RgbImage;
use log::info;
use ucad::backbone::bench::bench_backbones;
use ucad::backbone::cost::FrameCost;
use ucad::backbone::features_file::{self, ImageFeatures};
use ucad::backbone::import::import_weights;
use ucad::backbone::parity::{check_parity, token_cosines, CosineStats};
use ucad::backbone::{
    export_to_file, Arch, Arithmetic, ArithmeticChoice, Backbone, ExportOptions, Preprocessor, Quant, Resize,
    VitWeights,
};
use ucad::data::folder::load_rgb;
use ucad::data::synthetic::textured_image;

use super::args::BackboneArg;
use super::Context;

#[derive(clap::Subcommand)]
pub enum ModelsAction {
    /// Fetch, verify, import and export both default archs (idempotent).
    Fetch,
}

impl ModelsAction {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        match self {
            ModelsAction::Fetch => {
                ctx.cache.fetch_all()?;
                println!("default backbones ready in {}", ctx.cache.dir.display());
            }
        }
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct ImportWeightsArgs {
    #[arg(long, value_enum)]
    arch: Arch,
    #[arg(long)]
    onnx: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

impl ImportWeightsArgs {
    pub fn execute(self) -> Result<()> {
        import_weights(self.arch, &self.onnx)?.save(self.arch, &self.out)?;
        println!("wrote {}", self.out.display());
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct ExportArgs {
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
}

impl ExportArgs {
    pub fn execute(self) -> Result<()> {
        let arch = self.arch;
        let weights = match &self.weights {
            Some(path) => VitWeights::load_for(path, arch)?,
            None if arch == Arch::VitTinyTest => VitWeights::random(arch, self.seed),
            None => bail!("--weights is required for {arch}"),
        };
        let options = ExportOptions {
            arch,
            input_size: self.input_size.unwrap_or(ExportOptions::defaults(arch).input_size),
            blocks: self.blocks,
            prompt_len: self.prompt_len,
            quant: self.quant,
            resize: self.resize,
        };
        export_to_file(&weights, &options, &self.out)?;
        println!("wrote {}", self.out.display());
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct FeaturesArgs {
    #[command(flatten)]
    backbone: BackboneArg,
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
}

impl FeaturesArgs {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let backbone = load_logged(ctx, &self.backbone.backbone, ctx.arithmetic())?;
        let against = self.against.as_deref().map(|spec| {
            let arithmetic = self
                .against_compute_precision
                .map_or(ctx.arithmetic(), ArithmeticChoice::resolve);
            load_logged(ctx, spec, arithmetic)
        });
        let other = against.transpose()?;
        if let Some(other) = &other {
            ensure!(
                other.meta.input_size == backbone.meta.input_size
                    && other.meta.feature_dim() == backbone.meta.feature_dim(),
                "{} and {} do not compute features of one shape",
                backbone.path.display(),
                other.path.display()
            );
        }
        if let Some(out) = &self.save {
            let mut inputs = self
                .images
                .iter()
                .chain([&backbone.path])
                .chain(other.as_ref().map(|o| &o.path));
            if let Some(input) = inputs.find(|input| ucad::fsutil::same_file(out, input)) {
                bail!(
                    "--save {} is the input {}: write the features to a file of their own",
                    out.display(),
                    input.display()
                );
            }
        }
        let computed = self.extract(&backbone, other.as_ref())?;
        let dim = backbone.meta.feature_dim();
        if let Some(path) = &self.save {
            features_file::save(path, &backbone.file_sha256, dim, &computed)?;
            println!("features written to {}", path.display());
        }
        if let Some(path) = &self.compare {
            compare_features(path, &backbone.file_sha256, dim, &computed, self.min_cosine)?;
        }
        Ok(())
    }

    /// Each image's features, with a line of their summary (and their cosines with `other`'s).
    fn extract(&self, backbone: &Backbone, other: Option<&Backbone>) -> Result<Vec<ImageFeatures>> {
        let meta = &backbone.meta;
        let mut pre = Preprocessor::new(meta);
        let mut compared = Vec::new();
        let mut computed = Vec::new();
        for (name, img) in self.inputs()? {
            let start = Instant::now();
            let f = backbone.features(pre.tensor(&img)?, None)?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let mean = f.iter().sum::<f32>() / f.len() as f32;
            let rms = (f.iter().map(|v| v * v).sum::<f32>() / f.len() as f32).sqrt();
            let (patches, dim) = (meta.patches(), meta.feature_dim());
            let mut line = format!("{name}: features [{patches}, {dim}] mean {mean:.4} rms {rms:.4} in {ms:.1} ms");
            if let Some(other) = other {
                let c = token_cosines(&f, &other.features(pre.tensor(&img)?, None)?, dim);
                line += &format!(
                    "; against it: token cosine min {:.6} mean {:.6}, max |diff| {:.3e}",
                    c.min_cosine, c.mean_cosine, c.max_abs_diff
                );
                compared.push(c);
            }
            println!("{line}");
            computed.push((name, f));
        }
        if let Some(other) = other {
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
        Ok(computed)
    }

    /// The images named, or one generated image when none is.
    fn inputs(&self) -> Result<Vec<(String, RgbImage)>> {
        if self.images.is_empty() {
            return Ok(vec![("generated image (seed 0)".into(), textured_image(256, 256, 0))]);
        }
        self.images
            .iter()
            .map(|p| Ok((p.display().to_string(), load_rgb(p)?)))
            .collect()
    }
}

/// A backbone, its file, arch, blocks and arithmetic logged.
fn load_logged(ctx: &Context, spec: &str, arithmetic: Arithmetic) -> Result<Backbone> {
    let backbone = ctx.load_backbone_as(spec, arithmetic)?;
    let meta = &backbone.meta;
    info!(
        "{}: {} blocks {:?}, {} ({}), computing in {arithmetic}",
        backbone.path.display(),
        meta.arch,
        meta.feature_blocks,
        meta.quant.name(),
        &backbone.file_sha256[..12]
    );
    Ok(backbone)
}

/// Prints the per-patch cosines of `computed` against the features saved at `path`; fails below
/// `min_cosine`.
fn compare_features(
    path: &Path,
    backbone_sha256: &str,
    dim: usize,
    computed: &[ImageFeatures],
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
    ensure!(
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

#[derive(clap::Args)]
pub struct CheckParityArgs {
    #[arg(long, value_enum)]
    arch: Arch,
    #[arg(long, value_delimiter = ',', default_value = "5")]
    blocks: Vec<usize>,
}

impl CheckParityArgs {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let report = check_parity(&ctx.cache, self.arch, &self.blocks)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct BenchBackboneArgs {
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Also write the rows as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl BenchBackboneArgs {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let rows = bench_backbones(&ctx.cache, self.runs)?;
        ucad::backbone::bench::print_table(&rows);
        write_json(self.json.as_deref(), &rows)
    }
}

#[derive(clap::Args)]
pub struct BackboneCostArgs {
    /// Files, `default` or arch names (add `.int8` for the int8 export).
    #[arg(default_values_t = ["default".to_string(), "vit-b16-clip".to_string(), "vit-s14-dinov2".to_string()])]
    backbones: Vec<String>,
    /// Also write the rows as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl BackboneCostArgs {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let rows = self
            .backbones
            .iter()
            .map(|spec| FrameCost::of_file(&ctx.cache.resolve(spec)?))
            .collect::<Result<Vec<_>>>()?;
        ucad::backbone::cost::print_table(&rows);
        write_json(self.json.as_deref(), &rows)
    }
}

/// Writes `rows` as JSON to `path` when one is given.
fn write_json(path: Option<&Path>, rows: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = path {
        ucad::fsutil::write_atomic(path, serde_json::to_string_pretty(rows)?.as_bytes())?;
    }
    Ok(())
}
