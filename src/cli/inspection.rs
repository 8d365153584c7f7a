//! Commands that run the inspection loop: `run` on a board, and `demo` and `bench-runtime` on
//! the embedded simulated board.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use ucad::backbone::Backbone;
use ucad::fit::FitParams;
use ucad::runtime::board_report::{self, FrameTime};
use ucad::runtime::config::{FailsafeAction, RunConfig, SourceConfig};
use ucad::runtime::counters::Summary;
use ucad::runtime::inspection::Inspector;
use ucad::runtime::learn::learn_conveyor;
use ucad::runtime::source::FrameSource;
use ucad::runtime::stop_line::assert_stop_line;

use super::args::BackboneArg;
use super::{arithmetic_for, Context};

#[derive(clap::Args)]
pub struct RunArgs {
    /// A board config (board/*.toml).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    options: LoopOptions,
}

impl RunArgs {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let mut config = RunConfig::load(&self.config)?;
        config.runtime = ctx.flags.over(config.runtime);
        run_loop(ctx, config, &self.options).map(drop)
    }
}

/// How long the loop runs and what it does around it.
#[derive(clap::Args, Clone)]
pub struct LoopOptions {
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
pub struct DemoArgs {
    #[command(flatten)]
    backbone: BackboneArg,
    #[arg(long, default_value_t = 3)]
    products: usize,
    #[arg(long, default_value_t = 36, value_parser = clap::value_parser!(u64).range(1..))]
    frames: u64,
}

impl DemoArgs {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let (config, options) = demo_run(ctx, &self.backbone.backbone, self.products, self.frames, None)?;
        run_loop(ctx, config, &options).map(drop)
    }
}

#[derive(clap::Args)]
pub struct BenchRuntimeArgs {
    #[command(flatten)]
    backbone: BackboneArg,
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    frames: u64,
    /// Also write the summary of the run on all threads here.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl BenchRuntimeArgs {
    /// The demo's loop on one thread, then (same bank) on `--threads` (0, the default: all cores).
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let all = ucad::parallel::resolve(ctx.runtime.threads)?;
        let (mut config, mut options) = demo_run(ctx, &self.backbone.backbone, 3, self.frames, self.json)?;
        let mut times = Vec::new();
        for threads in [1, all] {
            println!("== backbone on {threads} thread(s)");
            config.runtime.threads = threads;
            let stages = run_loop(ctx, config.clone(), &options)?.stages_ms;
            times.push(FrameTime {
                threads,
                frame_ms: stages.total(),
                backbone_ms: stages.backbone(),
            });
            options.learn = false;
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
        let path = ctx.cache.resolve(&config.backbone)?;
        let spec = Backbone::read_spec(&path)?;
        let arithmetic = config.runtime.precision.resolve();
        print!(
            "{}",
            board_report::render(&path, &spec.sha256, arithmetic, self.frames, &times)
        );
        Ok(())
    }
}

/// The embedded dry-run board: generated products, a simulated reject line.
const SIM_CONFIG: &str = include_str!("../../board/sim.toml");

/// The simulated board's config (its products learned into a fresh bank first), with the
/// backbone run as the global flags say.
fn demo_run(
    ctx: &Context,
    backbone: &str,
    products: usize,
    frames: u64,
    summary: Option<PathBuf>,
) -> Result<(RunConfig, LoopOptions)> {
    // A backbone file needs nothing from the model cache.
    if !Path::new(backbone).is_file() {
        ctx.cache.fetch_all()?;
    }
    let mut config: RunConfig = toml::from_str(SIM_CONFIG).context("the embedded board/sim.toml")?;
    let dir = std::env::temp_dir().join(format!("ucad-demo-{}", std::process::id()));
    config.bank.path = dir.join("bank.ucad");
    if let Some(audit) = &mut config.audit {
        audit.dir = dir.join("audit");
    }
    config.backbone = backbone.to_string();
    config.runtime = ctx.runtime;
    if let SourceConfig::Conveyor { products: count, .. } = &mut config.source {
        *count = products;
    }
    config.check()?;
    let options = LoopOptions {
        frames: Some(frames),
        summary_json: Some(summary.unwrap_or_else(|| dir.join("summary.json"))),
        learn: true,
    };
    Ok((config, options))
}

/// Runs the loop and prints its summary; a fault that ended it early is the error.
fn run_loop(ctx: &Context, config: RunConfig, options: &LoopOptions) -> Result<Summary> {
    // From the start: a signal during start-up (learning, loading the backbone) ends the run
    // before its first frame, with its summary, once start-up is done; a second one at once.
    let stop = stop_on_signals()?;
    let (backbone, mut source) = open_run(ctx, &config, options).inspect_err(|e| {
        log::error!("{e:#}: cannot start inspecting");
        if config.failsafe.action == FailsafeAction::StopLine {
            assert_stop_line(config.failsafe.stop_line.as_ref());
        }
    })?;
    let mut inspector = Inspector::new(backbone, config);
    inspector.stop_when(stop);
    let outcome = inspector.run(source.as_mut(), options.frames)?;
    if outcome.stopped {
        println!("stopped by a signal");
    }
    print!("{}", outcome.summary);
    if let Some(path) = &options.summary_json {
        ucad::fsutil::write_atomic(path, serde_json::to_string_pretty(&outcome.summary)?.as_bytes())?;
        println!("summary written to {}", path.display());
    }
    outcome.fault.map_or(Ok(outcome.summary), Err)
}

/// The backbone (after learning the conveyor's products, with `--learn`) and the frame source.
fn open_run(ctx: &Context, config: &RunConfig, options: &LoopOptions) -> Result<(Backbone, Box<dyn FrameSource>)> {
    // --learn writes a new bank: nothing to follow.
    let arithmetic = match options.learn {
        true => config.runtime.precision.resolve(),
        false => arithmetic_for(config.runtime.precision, &config.bank.path),
    };
    let backbone = ctx.load_backbone_as(&config.backbone, arithmetic)?;
    if options.learn {
        if let Some(dir) = config.bank.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        learn_conveyor(&backbone, &config.source, &config.bank.path, &FitParams::default())?;
    }
    let source = ucad::runtime::open_source(&config.source, config.failsafe.stall)?;
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
