//! Proof that an exported backbone computes the pretrained model's features: our plain-mode
//! tokens after block b against the original PyPI graph's hidden state after block b, both run
//! by tract on the same input.

use std::path::Path;

use anyhow::{Context, Result};
use prost::Message;
use serde::Serialize;
use tract_core::prelude::*;
use tract_onnx::prelude::{Framework, InferenceFact, InferenceModelExt};

use super::arch::Arch;
use super::export::{export_model, ExportOptions};
use super::meta::Quant;
use super::models::ModelCache;
use super::preprocess::Preprocessor;
use super::runner::Backbone;
use super::weights::VitWeights;
use crate::data::synthetic::textured_image;

#[derive(Debug, Serialize)]
pub struct CosineStats {
    pub min_cosine: f32,
    pub mean_cosine: f32,
    /// Largest absolute difference of any feature value.
    pub max_abs_diff: f32,
}

#[derive(Debug, Serialize)]
pub struct BlockParity {
    pub block: usize,
    pub f32: CosineStats,
    pub int8: CosineStats,
}

#[derive(Debug, Serialize)]
pub struct ParityReport {
    pub arch: Arch,
    pub original: String,
    /// The export whose arithmetic matches the original graph's (int8 for the int8 CLIP file).
    pub matching_quant: Quant,
    /// Minimum per-token cosine of the matching export over all checked blocks.
    pub min_cosine: f32,
    pub blocks: Vec<BlockParity>,
}

/// The node whose output is the residual stream after block `b` in the original graph.
fn hidden_state_name(arch: Arch, b: usize) -> Result<String> {
    Ok(match arch {
        Arch::VitB16Clip => format!("/vision_model/encoder/layers.{b}/Add_1"),
        Arch::VitS14Dinov2 => format!("/backbone/encoder/layer.{b}/Add_1"),
        other => anyhow::bail!("no original graph to compare {other} with"),
    })
}

pub fn check_parity(cache: &ModelCache, arch: Arch, blocks: &[usize]) -> Result<ParityReport> {
    let original = cache.original_onnx(arch)?;
    let weights = VitWeights::load_for(&cache.weights(arch), arch)?;
    let matching_quant = if original.to_string_lossy().contains("int8") {
        Quant::Int8
    } else {
        Quant::F32
    };
    let defaults = ExportOptions::defaults(arch);
    let exported = |quant: Quant, block: usize| -> Result<Backbone> {
        let opts = ExportOptions {
            blocks: vec![block],
            quant,
            ..defaults.clone()
        };
        let bytes = export_model(&weights, &opts)?.encode_to_vec();
        Backbone::from_bytes(bytes, Path::new(&format!("<{arch} block {block} {}>", quant.name())), 1)
    };
    let first = exported(Quant::F32, blocks[0])?;
    let image = Preprocessor::new(&first.meta).tensor(&textured_image(256, 256, 0))?;
    let hidden = run_original(&original, arch, &image, blocks)?;

    let mut report_blocks = Vec::new();
    for (block, want) in blocks.iter().zip(&hidden) {
        let stats = |quant: Quant| -> Result<CosineStats> {
            let got = exported(quant, *block)?.features(image.clone(), None)?;
            Ok(token_cosines(&got, want, first.meta.embed_dim))
        };
        report_blocks.push(BlockParity {
            block: *block,
            f32: stats(Quant::F32)?,
            int8: stats(Quant::Int8)?,
        });
    }
    let min_cosine = report_blocks
        .iter()
        .map(|b| {
            if matching_quant == Quant::Int8 {
                b.int8.min_cosine
            } else {
                b.f32.min_cosine
            }
        })
        .fold(f32::INFINITY, f32::min);
    Ok(ParityReport {
        arch,
        original: original.display().to_string(),
        matching_quant,
        min_cosine,
        blocks: report_blocks,
    })
}

/// Patch tokens (CLS dropped) after each block, from the original graph cut at that node.
fn run_original(path: &Path, arch: Arch, image: &Tensor, blocks: &[usize]) -> Result<Vec<Vec<f32>>> {
    let names: Vec<String> = blocks
        .iter()
        .map(|b| hidden_state_name(arch, *b))
        .collect::<Result<_>>()?;
    let model = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
        .model_for_path(path)
        .with_context(|| format!("{}: tract cannot parse the original graph", path.display()))?
        .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), image.shape()))?
        .with_outputs_by_name(&names)?;
    let plan = model.into_optimized()?.into_runnable()?;
    let outputs = plan.run(tvec!(image.clone().into()))?;
    outputs
        .iter()
        .map(|t| {
            let d = *t.shape().last().context("hidden state has no channel axis")?;
            Ok(t.try_as_plain_ram()?.as_slice::<f32>()?[d..].to_vec())
        })
        .collect()
}

pub(crate) fn token_cosines(a: &[f32], b: &[f32], dim: usize) -> CosineStats {
    let cosines: Vec<f32> = a.chunks(dim).zip(b.chunks(dim)).map(|(x, y)| cosine(x, y)).collect();
    CosineStats {
        min_cosine: cosines.iter().copied().fold(f32::INFINITY, f32::min),
        mean_cosine: cosines.iter().sum::<f32>() / cosines.len() as f32,
        max_abs_diff: a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max),
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb).max(1e-30)) as f32
}
