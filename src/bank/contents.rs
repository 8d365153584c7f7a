//! What a bank holds: its tasks (key, knowledge, prompt, threshold and the statistics fitted
//! with them), the capacity a device reserves for it, and the errors of reading one. The file
//! around it: format.rs; the checks every load makes: validate.rs.

use serde::{Deserialize, Serialize};

use super::colour::ColourStats;
use super::projection::Projection;
use super::rows::{Precision, Rows};
use crate::backbone::colour::COLOUR_DIMS;
use crate::backbone::{Arithmetic, BackboneSpec, Prompt};

#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("{path}: cannot read the bank: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a ucad bank (bad magic)")]
    NotABank { path: String },
    #[error("{path}: bank format {found} is newer than this ucad reads ({supported}); update ucad")]
    NewerFormat { path: String, found: u32, supported: u32 },
    #[error("{path}: bank format {found} is no longer read; re-fit the bank")]
    OlderFormat { path: String, found: u32 },
    #[error("{path}: truncated bank ({got} bytes, the header announces {expected})")]
    Truncated { path: String, expected: u64, got: u64 },
    #[error("{path}: bank checksum mismatch (the file is damaged)")]
    Checksum { path: String },
    #[error("{path}: bank body does not decode: {reason}")]
    Corrupt { path: String, reason: String },
    #[error(
        "{path}: bank was fitted on {bank} features, but the backbone computes in {backbone} and thresholds \
         move between the two: re-fit the bank in {backbone} (--compute-precision {backbone}), or use it anyway \
         with --allow-precision-mismatch \
         ([runtime] allow_precision_mismatch = true for `ucad run`)"
    )]
    OtherArithmetic {
        path: String,
        bank: Arithmetic,
        backbone: Arithmetic,
    },
    #[error("{path}: bank was fitted on backbone {bank}, not on the loaded backbone {backbone}")]
    WrongBackbone {
        path: String,
        bank: String,
        backbone: String,
    },
    #[error("{path}: bank {field} is {bank}, the backbone's is {backbone}")]
    BackboneMismatch {
        path: String,
        field: String,
        bank: usize,
        backbone: usize,
    },
    #[error("{path}: bank does not fit the configured capacity: {reason}")]
    OverCapacity { path: String, reason: String },
    #[error("{path}: invalid bank: {field} {problem}")]
    Invalid {
        path: String,
        field: String,
        problem: String,
    },
}

/// Statistics of image scores of held-out normal training images (never test images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalStats {
    pub count: u32,
    pub mean: f32,
    pub std: f32,
    pub max: f32,
    /// The false-reject rate the threshold was set for.
    pub target_false_reject: f32,
}

/// Routing distances of held-out normal training images to the task's own key: what makes
/// distances of different products comparable. A routing distance minus `mean`, over `std`, is
/// the task's normalised distance (0 = a typical normal part, in standard deviations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingStats {
    pub count: u32,
    pub mean: f32,
    pub std: f32,
    /// Normalised distance above which an image may not be this product.
    pub unknown_above: f32,
    /// Patch score above which a patch is unlike the task's normal patches (their 0.995 quantile).
    pub patch_limit: f32,
    /// The colours of the task's normal images: a part in other colours is not this product.
    pub colour: ColourStats,
    /// The image-level signal next to the patch key's.
    pub image: ImageStats,
}

/// The image-level routing signal: descriptors (mean over patches of the plain features) of the
/// task's fit images, and the distance of a normal image's descriptor to the nearest of them
/// (held-out images, and each fit image to the others): a routing distance of the image-level
/// kind minus `mean`, over `std`, is the task's normalised image distance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageStats {
    pub descriptors: Rows,
    pub mean: f32,
    /// At least a fixed share of `mean` (see `fit`).
    pub std: f32,
}

/// A learned prefix prompt, [blocks, 2, len, dim] as rows of `dim`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPrompt {
    pub blocks: u32,
    pub len: u32,
    pub rows: Rows,
}

impl StoredPrompt {
    /// Kept at full precision: a prompt is small (blocks × 2 × len × dim values) and every
    /// feature depends on it.
    pub fn new(prompt: &Prompt) -> StoredPrompt {
        StoredPrompt {
            blocks: prompt.blocks as u32,
            len: prompt.len as u32,
            rows: Rows::new(prompt.dim, prompt.data.clone(), Precision::F32),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    /// Coreset of plain (un-prompted) patch features: what routing compares with.
    pub key: Rows,
    pub prompt: Option<StoredPrompt>,
    /// The subspace knowledge rows are stored in; `None`: the full feature space.
    pub projection: Option<Projection>,
    /// Coreset of (prompted) patch features, projected when there is a projection: what patch
    /// scores are distances to.
    pub knowledge: Rows,
    /// Neighbours averaged for a patch score.
    pub k: u32,
    /// Image score above which a part of this product is rejected.
    pub threshold: f32,
    pub normal: NormalStats,
    pub routing: RoutingStats,
}

impl Task {
    /// A task with its rows and no calibration yet: it rejects nothing and every image is within
    /// its routing limit, until the held-out images set its statistics. Only a step of a fit:
    /// its infinite limits would pass every part, so no bank holding it is saved or loaded.
    pub fn uncalibrated(name: &str, key: Rows, projection: Option<Projection>, knowledge: Rows, k: u32) -> Task {
        let descriptors = key.clone();
        Task {
            name: name.to_string(),
            key,
            prompt: None,
            projection,
            knowledge,
            k,
            threshold: f32::INFINITY,
            normal: NormalStats {
                count: 0,
                mean: 0.0,
                std: 0.0,
                max: 0.0,
                target_false_reject: 0.0,
            },
            routing: RoutingStats {
                count: 0,
                mean: 0.0,
                std: 1.0,
                unknown_above: f32::INFINITY,
                patch_limit: f32::INFINITY,
                colour: ColourStats {
                    mean: [0.0; COLOUR_DIMS],
                    spread: [1.0; COLOUR_DIMS],
                    limit: f32::INFINITY,
                },
                // The key's rows stand in for descriptors; an infinite spread makes every
                // image distance 0 until calibration sets both.
                image: ImageStats {
                    descriptors,
                    mean: 0.0,
                    std: f32::INFINITY,
                },
            },
        }
    }

    /// Dimension of the knowledge rows.
    pub(crate) fn knowledge_dim(&self) -> usize {
        self.projection.as_ref().map_or(self.key.dim(), Projection::out_dim)
    }

    pub fn bytes(&self) -> usize {
        let prompt = self.prompt.as_ref().map_or(0, |p| p.rows.bytes());
        let projection = self.projection.as_ref().map_or(0, Projection::bytes);
        self.key.bytes() + self.knowledge.bytes() + self.routing.image.descriptors.bytes() + prompt + projection
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bank {
    /// Increases with every change; devices refuse an older bank than the one installed.
    pub version: u64,
    /// sha256 of the backbone file the features came from.
    pub backbone_sha256: String,
    pub feature_dim: u32,
    pub patches: u32,
    /// What the backbone computed the features in: the thresholds hold for it alone.
    pub arithmetic: Arithmetic,
    pub tasks: Vec<Task>,
}

/// Limits a device reserves memory for; a bank beyond them is refused, never truncated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub tasks: usize,
    pub bytes_per_task: usize,
}

impl Capacity {
    /// What a device reserves unless its `[bank]` section says otherwise.
    pub const DEFAULT: Capacity = Capacity {
        tasks: 32,
        bytes_per_task: 2048 << 10,
    };
}

impl Bank {
    pub fn new(backbone_sha256: &str, feature_dim: usize, patches: usize) -> Bank {
        Bank {
            version: 0,
            backbone_sha256: backbone_sha256.to_string(),
            feature_dim: feature_dim as u32,
            patches: patches as u32,
            arithmetic: Arithmetic::F32,
            tasks: Vec::new(),
        }
    }

    /// A bank with no task yet, for the features of the backbone `spec` describes.
    pub fn for_backbone(spec: &BackboneSpec) -> Bank {
        Bank {
            arithmetic: spec.arithmetic.unwrap_or_default(),
            ..Bank::new(&spec.sha256, spec.feature_dim, spec.patches)
        }
    }

    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }

    pub fn check_capacity(&self, capacity: Capacity, origin: &str) -> Result<(), BankError> {
        let over = |reason: String| {
            Err(BankError::OverCapacity {
                path: origin.to_string(),
                reason,
            })
        };
        if self.tasks.len() > capacity.tasks {
            return over(format!("{} tasks, room for {}", self.tasks.len(), capacity.tasks));
        }
        for t in &self.tasks {
            if t.bytes() > capacity.bytes_per_task {
                return over(format!(
                    "task {} holds {} bytes, room for {}",
                    t.name,
                    t.bytes(),
                    capacity.bytes_per_task
                ));
            }
        }
        Ok(())
    }

    pub fn bytes_per_task(&self) -> Vec<(String, usize)> {
        self.tasks.iter().map(|t| (t.name.clone(), t.bytes())).collect()
    }
}
