//! `ucad bench-backbone`: ms per image of tract on our exported graph next to onnxruntime on
//! the same file (the peer a user would otherwise pick), measured in one run on one machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::arch::Arch;
use super::meta::Quant;
use super::models::ModelCache;
use super::preprocess::Preprocessor;
use super::runner::Backbone;
use crate::data::synthetic::textured_image;
use tract_linalg::multithread::multithread_tract_scope;

/// The onnxruntime timing script, run by the peer's Python.
const ORT_SCRIPT: &str = include_str!("../../models/ort_bench.py");

/// The thread counts every file is timed at, by both runtimes.
pub(crate) const THREADS: [usize; 2] = [1, 2];

#[derive(Debug, Serialize)]
pub struct BenchRow {
    pub arch: Arch,
    pub quant: Quant,
    pub file: String,
    pub file_mib: f64,
    pub timings: Vec<Timing>,
}

/// Median ms per plain pass on `threads` threads.
#[derive(Debug, Serialize)]
pub struct Timing {
    pub threads: usize,
    pub tract_ms: f64,
    pub ort_ms: f64,
}

/// Median ms per plain pass of `backbone` over `runs` runs after 2 warm-up runs, on the
/// executor the caller is in.
pub(crate) fn time_tract(backbone: &Backbone, runs: usize) -> Result<f64> {
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

/// onnxruntime's median ms per pass of `file` at each of [`THREADS`].
fn time_ort(python: &Path, file: &Path, runs: usize) -> Result<Vec<f64>> {
    let out = Command::new(python)
        .args(["-c", ORT_SCRIPT])
        .arg(file)
        .arg(runs.to_string())
        .args(THREADS.map(|t| t.to_string()))
        .output()
        .with_context(|| format!("cannot run the onnxruntime peer with {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "onnxruntime peer failed on {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ms: HashMap<String, f64> =
        serde_json::from_slice(&out.stdout).context("onnxruntime peer printed no timing JSON")?;
    THREADS
        .iter()
        .map(|t| {
            ms.get(&t.to_string())
                .copied()
                .context("onnxruntime peer left out a thread count")
        })
        .collect()
}

/// The Python that has onnxruntime: `$UCAD_PEER_PYTHON`, else the project's `.venv`.
pub(crate) fn peer_python() -> Result<PathBuf> {
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

/// tract and onnxruntime on each default export (the default first), at 1 and 2 threads.
pub fn bench_backbones(cache: &ModelCache, runs: usize) -> Result<Vec<BenchRow>> {
    let python = peer_python()?;
    let mut rows = Vec::new();
    for arch in [Arch::VitB16Clip, Arch::VitS14Dinov2] {
        for quant in [Quant::Int8, Quant::F32] {
            let file = cache.backbone(arch, quant);
            let backbone = Backbone::load(&file)?;
            let ort = time_ort(&python, &file, runs)?;
            let timings = THREADS
                .iter()
                .zip(ort)
                .map(|(&threads, ort_ms)| {
                    let tract_ms =
                        multithread_tract_scope(crate::parallel::executor(threads)?, || time_tract(&backbone, runs))?;
                    Ok(Timing {
                        threads,
                        tract_ms,
                        ort_ms,
                    })
                })
                .collect::<Result<_>>()?;
            let bytes = std::fs::metadata(&file)
                .with_context(|| format!("cannot stat {}", file.display()))?
                .len();
            rows.push(BenchRow {
                arch,
                quant,
                file: file.display().to_string(),
                file_mib: bytes as f64 / (1 << 20) as f64,
                timings,
            });
        }
    }
    Ok(rows)
}

pub fn print_table(rows: &[BenchRow]) {
    let heads: Vec<String> = THREADS
        .iter()
        .map(|t| format!("tract ms ({t} thr) | onnxruntime ms ({t} thr)"))
        .collect();
    println!(
        "| arch | quant | file MiB | {} | tract {}/{} threads | tract / ort (1 thr) |",
        heads.join(" | "),
        THREADS[1],
        THREADS[0]
    );
    println!("|---|---|---|{}---|---|", "---|---|".repeat(THREADS.len()));
    for r in rows {
        let cells: Vec<String> = r
            .timings
            .iter()
            .map(|t| format!("{:.1} | {:.1}", t.tract_ms, t.ort_ms))
            .collect();
        println!(
            "| {} | {} | {:.1} | {} | {:.2} | {:.2} |",
            r.arch,
            r.quant.name(),
            r.file_mib,
            cells.join(" | "),
            r.timings[1].tract_ms / r.timings[0].tract_ms,
            r.timings[0].tract_ms / r.timings[0].ort_ms
        );
    }
}
