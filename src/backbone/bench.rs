//! `ucad bench-backbone`: ms per image of tract on our exported graph next to onnxruntime on
//! the same file (the peer a user would otherwise pick), measured in one run on one machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::arch::Arch;
use super::meta::Quant;
use super::models::ModelCache;
use super::preprocess::Preprocessor;
use super::runner::Backbone;
use crate::data::synthetic::textured_image;

/// The onnxruntime timing script, run by the peer's Python.
const ORT_SCRIPT: &str = include_str!("../../models/ort_bench.py");

#[derive(Debug, Serialize)]
pub struct BenchRow {
    pub arch: Arch,
    pub quant: Quant,
    pub file: String,
    pub tract_ms: f64,
    pub ort_ms_1_thread: f64,
    pub ort_ms_all_threads: f64,
    /// tract time / onnxruntime single-thread time (tract runs on one thread).
    pub ratio_vs_ort_1_thread: f64,
}

#[derive(Deserialize)]
struct OrtTiming {
    ms_1_thread: f64,
    ms_all_threads: f64,
}

/// Median ms per plain pass of `backbone` over `runs` runs after 2 warm-up runs.
pub fn time_tract(backbone: &Backbone, runs: usize) -> Result<f64> {
    let image = Preprocessor::new(&backbone.meta).tensor(&textured_image(256, 256, 1))?;
    for _ in 0..2 {
        backbone.features(image.clone(), None)?;
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            backbone
                .features(image.clone(), None)
                .map(|_| start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn time_ort(python: &Path, file: &Path, runs: usize) -> Result<OrtTiming> {
    let out = Command::new(python)
        .args(["-c", ORT_SCRIPT])
        .arg(file)
        .arg(runs.to_string())
        .output()
        .with_context(|| format!("cannot run the onnxruntime peer with {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "onnxruntime peer failed on {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("onnxruntime peer printed no timing JSON")
}

/// The Python that has onnxruntime: `$UCAD_PEER_PYTHON`, else the project's `.venv`.
pub fn peer_python() -> Result<PathBuf> {
    let python = std::env::var_os("UCAD_PEER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".venv/bin/python"));
    if !python.is_file() {
        bail!(
            "{} not found: create the peer with `python3 -m venv .venv && .venv/bin/pip install onnxruntime numpy`",
            python.display()
        );
    }
    Ok(python)
}

pub fn bench_backbones(cache: &ModelCache, runs: usize) -> Result<Vec<BenchRow>> {
    let python = peer_python()?;
    let mut rows = Vec::new();
    for arch in [Arch::VitB16Clip, Arch::VitS14Dinov2] {
        for quant in [Quant::F32, Quant::Int8] {
            let file = cache.backbone(arch, quant);
            let tract_ms = time_tract(&Backbone::load(&file)?, runs)?;
            let ort = time_ort(&python, &file, runs)?;
            rows.push(BenchRow {
                arch,
                quant,
                file: file.display().to_string(),
                tract_ms,
                ort_ms_1_thread: ort.ms_1_thread,
                ort_ms_all_threads: ort.ms_all_threads,
                ratio_vs_ort_1_thread: tract_ms / ort.ms_1_thread,
            });
        }
    }
    Ok(rows)
}

pub fn print_table(rows: &[BenchRow]) {
    println!("| arch | quant | tract ms | onnxruntime ms (1 thread) | onnxruntime ms (all threads) | tract / ort (1 thread) |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            r.arch,
            r.quant.name(),
            r.tract_ms,
            r.ort_ms_1_thread,
            r.ort_ms_all_threads,
            r.ratio_vs_ort_1_thread
        );
    }
}
