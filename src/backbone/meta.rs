//! What an exported backbone file says about itself (ONNX `metadata_props`), so that the runner,
//! the bank and the preprocessing never guess.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tract_onnx::pb::StringStringEntryProto;

use super::arch::Arch;
use super::Arithmetic;

/// Bumped when the graph's inputs or outputs change meaning.
pub(crate) const GRAPH_FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Quant {
    /// f32 weights and activations.
    F32,
    /// int8 weights, one scale per output channel (`DequantizeLinear`), turned into f32 when the
    /// file is loaded: a quarter of the file size, f32 arithmetic.
    Int8,
    /// The pretrained CLIP graph's own scheme, for `check-parity` only: int8 weights, activations
    /// quantised per tensor at run time (`DynamicQuantizeLinear` + `MatMulInteger`). tract runs it
    /// 50–120× slower than f32, so no backbone is exported with it.
    #[value(skip)]
    Int8Dynamic,
}

impl Quant {
    pub fn name(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::Int8 => "int8",
            Quant::Int8Dynamic => "int8-dynamic",
        }
    }
}

/// How an image of any size becomes the square network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Resize the whole image to S×S (keeps every pixel in view; aspect is not kept).
    Squash,
    /// Resize the shorter side to S, then take the centre S×S.
    CenterCrop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneMeta {
    pub arch: Arch,
    pub patch: usize,
    pub input_size: usize,
    pub embed_dim: usize,
    pub heads: usize,
    /// Blocks whose patch tokens are concatenated (channel axis) into the output.
    pub feature_blocks: Vec<usize>,
    /// Blocks 0..prompt_blocks take a prefix prompt (all blocks that run).
    pub prompt_blocks: usize,
    pub prompt_len: usize,
    pub resize: Resize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub weights_sha256: String,
    pub quant: Quant,
}

impl BackboneMeta {
    pub fn grid(&self) -> usize {
        self.input_size / self.patch
    }

    pub fn patches(&self) -> usize {
        self.grid() * self.grid()
    }

    pub fn feature_dim(&self) -> usize {
        self.embed_dim * self.feature_blocks.len()
    }

    pub(crate) fn to_props(&self) -> Vec<StringStringEntryProto> {
        let json = serde_json::to_string(self).expect("metadata serialises");
        [("ucad.format", GRAPH_FORMAT.to_string()), ("ucad.backbone", json)]
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key: key.into(), value })
            .collect()
    }

    pub(crate) fn from_props(props: &[StringStringEntryProto], origin: &str) -> Result<BackboneMeta> {
        let map: HashMap<&str, &str> = props.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
        let format: u32 = map
            .get("ucad.format")
            .with_context(|| format!("{origin}: not a ucad backbone (no ucad metadata); export it with `ucad export`"))?
            .parse()
            .with_context(|| format!("{origin}: bad ucad.format metadata"))?;
        if format != GRAPH_FORMAT {
            bail!("{origin}: backbone graph format {format}, this ucad reads {GRAPH_FORMAT}; re-export it");
        }
        let json = map
            .get("ucad.backbone")
            .with_context(|| format!("{origin}: ucad.backbone metadata missing"))?;
        serde_json::from_str(json).with_context(|| format!("{origin}: bad ucad.backbone metadata"))
    }
}

/// What a bank is checked against: the backbone it will be used with, as its file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackboneSpec {
    pub sha256: String,
    pub feature_dim: usize,
    pub patches: usize,
    pub prompt_blocks: usize,
    pub prompt_len: usize,
    pub embed_dim: usize,
    /// What the backbone computes in; `None`: a bank of either is accepted (a backbone file not
    /// yet running, or a mismatch the user allowed).
    pub arithmetic: Option<Arithmetic>,
}

impl BackboneSpec {
    /// A backbone file's spec, with its arithmetic unchecked.
    pub fn new(sha256: &str, meta: &BackboneMeta) -> BackboneSpec {
        BackboneSpec {
            sha256: sha256.to_string(),
            feature_dim: meta.feature_dim(),
            patches: meta.patches(),
            prompt_blocks: meta.prompt_blocks,
            prompt_len: meta.prompt_len,
            embed_dim: meta.embed_dim,
            arithmetic: None,
        }
    }

    /// With `allow`, banks fitted in another arithmetic than the backbone's are accepted
    /// (`--allow-precision-mismatch`, `[runtime] allow_precision_mismatch`).
    pub fn allowing_precision_mismatch(self, allow: bool) -> BackboneSpec {
        match allow {
            true => BackboneSpec {
                arithmetic: None,
                ..self
            },
            false => self,
        }
    }
}
