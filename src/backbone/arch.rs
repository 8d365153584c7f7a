//! The ViT variants ucad can export, and the numbers that define each one.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// Feed-forward activation of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, 0.5·x·(1 + erf(x/√2)).
    Gelu,
    /// CLIP's QuickGELU, x·σ(1.702·x).
    QuickGelu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// OpenAI CLIP ViT-B/16 image tower (pre-norm, QuickGELU).
    VitB16Clip,
    /// DINOv2 ViT-S/14 (LayerScale).
    VitS14Dinov2,
    /// timm supervised ViT-B/16.
    VitB16,
    /// A tiny random ViT for unit tests (no download).
    VitTinyTest,
}

/// Everything the exporter, the importer and the reference forward need to know about an arch.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchSpec {
    pub embed_dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub patch: usize,
    pub mlp_hidden: usize,
    pub activation: Activation,
    pub ln_eps: f32,
    /// A LayerNorm (`norm_pre`) after the position embedding (CLIP).
    pub pre_norm: bool,
    /// LayerScale gammas `ls1`/`ls2` on both residual branches (DINOv2).
    pub layer_scale: bool,
    pub patch_bias: bool,
    /// Side of the square grid the stored `pos_embed` was trained at.
    pub stored_grid: usize,
    pub default_input_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
const HALF: [f32; 3] = [0.5, 0.5, 0.5];

impl Arch {
    pub fn spec(self) -> ArchSpec {
        match self {
            Arch::VitB16Clip => ArchSpec {
                embed_dim: 768,
                depth: 12,
                heads: 12,
                patch: 16,
                mlp_hidden: 3072,
                activation: Activation::QuickGelu,
                ln_eps: 1e-5,
                pre_norm: true,
                layer_scale: false,
                patch_bias: false,
                stored_grid: 14,
                default_input_size: 224,
                mean: CLIP_MEAN,
                std: CLIP_STD,
            },
            Arch::VitS14Dinov2 => ArchSpec {
                embed_dim: 384,
                depth: 12,
                heads: 6,
                patch: 14,
                mlp_hidden: 1536,
                activation: Activation::Gelu,
                ln_eps: 1e-6,
                pre_norm: false,
                layer_scale: true,
                patch_bias: true,
                stored_grid: 37,
                default_input_size: 224,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
            Arch::VitB16 => ArchSpec {
                embed_dim: 768,
                depth: 12,
                heads: 12,
                patch: 16,
                mlp_hidden: 3072,
                activation: Activation::Gelu,
                ln_eps: 1e-6,
                pre_norm: false,
                layer_scale: false,
                patch_bias: true,
                stored_grid: 14,
                default_input_size: 224,
                mean: HALF,
                std: HALF,
            },
            Arch::VitTinyTest => ArchSpec {
                embed_dim: 32,
                depth: 4,
                heads: 4,
                patch: 8,
                mlp_hidden: 64,
                activation: Activation::Gelu,
                ln_eps: 1e-6,
                pre_norm: true,
                layer_scale: true,
                patch_bias: true,
                stored_grid: 4,
                default_input_size: 32,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
        }
    }

    /// The name used on the command line, in metadata and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Arch::VitB16Clip => "vit-b16-clip",
            Arch::VitS14Dinov2 => "vit-s14-dinov2",
            Arch::VitB16 => "vit-b16",
            Arch::VitTinyTest => "vit-tiny-test",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Arch> {
        Arch::value_variants().iter().copied().find(|a| a.name() == name)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ArchSpec {
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.heads
    }
}
