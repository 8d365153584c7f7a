//! The bank file: `UCADBANK` magic, format version, body length, a postcard body and the
//! sha256 of the body. Tasks are kept in learning order; appending one leaves the bytes of the
//! others untouched.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::projection::Projection;
use super::rows::{Precision, Rows};
use super::validate::{check_task, BackboneSpec};
use crate::backbone::{Arithmetic, Prompt};
use crate::detect::colour::{ColourStats, COLOUR_DIMS};

const MAGIC: &[u8; 8] = b"UCADBANK";
/// 2: compact knowledge (projection, int8) and routing statistics; 3: the tasks' colour
/// statistics; 4: chroma quartiles in the colour statistics; 5: the arithmetic of the features;
/// 6: the image-level routing signal (descriptors of the fit images and their spread). Older
/// banks are refused with a re-fit error: what they lack needs the training images, and a task
/// routed on one signal next to tasks routed on two would not be compared fairly.
pub const FORMAT_VERSION: u32 = 6;
/// The oldest format read.
const OLDEST_READ: u32 = 6;
const HEADER_LEN: usize = 8 + 4 + 8;
const CHECKSUM_LEN: usize = 32;

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
    /// At least a fixed share of `mean` (see `detect::fit`).
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
    pub fn knowledge_dim(&self) -> usize {
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

    /// Appends a task (replacing none) and bumps the version; the task must pass the check
    /// every load makes.
    pub fn append(&mut self, task: Task) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.tasks.iter().any(|t| t.name == task.name),
            "the bank already has a task named {}",
            task.name
        );
        check_task(&task, self.feature_dim as usize)
            .map_err(|p| anyhow::anyhow!("cannot add the task: {} {}", p.field, p.problem))?;
        self.version = self
            .version
            .checked_add(1)
            .filter(|v| *v <= super::validate::MAX_VERSION)
            .context("the bank's version is at its highest: no newer version can be made")?;
        self.tasks.push(task);
        Ok(())
    }

    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        seal(&postcard::to_allocvec(self).expect("bank serialises"))
    }

    /// Parses a bank; `origin` names it in errors. Never panics, whatever the bytes.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Bank, BankError> {
        let path = origin.to_string();
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(BankError::NotABank { path });
        }
        if bytes.len() < HEADER_LEN {
            return Err(BankError::Truncated {
                path,
                expected: HEADER_LEN as u64,
                got: bytes.len() as u64,
            });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version > FORMAT_VERSION {
            return Err(BankError::NewerFormat {
                path,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if version < OLDEST_READ {
            return Err(BankError::OlderFormat { path, found: version });
        }
        let body_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let expected = (HEADER_LEN as u64)
            .saturating_add(body_len)
            .saturating_add(CHECKSUM_LEN as u64);
        if bytes.len() as u64 != expected {
            return Err(BankError::Truncated {
                path,
                expected,
                got: bytes.len() as u64,
            });
        }
        let body = &bytes[HEADER_LEN..HEADER_LEN + body_len as usize];
        if Sha256::digest(body).as_slice() != &bytes[HEADER_LEN + body_len as usize..] {
            return Err(BankError::Checksum { path });
        }
        let corrupt = |reason: String| BankError::Corrupt {
            path: path.clone(),
            reason,
        };
        let (bank, rest) = postcard::take_from_bytes::<Bank>(body).map_err(|e| corrupt(e.to_string()))?;
        if !rest.is_empty() {
            return Err(corrupt(format!("{} bytes follow the bank", rest.len())));
        }
        bank.validate(&path)?;
        Ok(bank)
    }

    pub fn load(path: &Path) -> Result<Bank, BankError> {
        Bank::from_bytes(&read_bank_file(path)?, &path.display().to_string())
    }

    /// Writes the bank, which must pass the check every load makes: nothing writes a bank that
    /// would be refused.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        self.validate(&path.display().to_string())?;
        crate::fsutil::write_atomic(path, &self.to_bytes())
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

/// A bank file around a postcard `body`: header, body, checksum. What [`Bank::to_bytes`] writes;
/// also lets tests and fuzz targets reach the decoder and the validation with any body.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CHECKSUM_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&Sha256::digest(body));
    out
}

/// Loads a bank for a backbone, with both checks: what every command that scores does.
pub fn load_for_backbone(path: &Path, backbone: &BackboneSpec) -> Result<Bank, BankError> {
    let bank = Bank::load(path)?;
    bank.check_backbone(backbone, &path.display().to_string())?;
    Ok(bank)
}

/// The largest bank file read: far beyond any device's capacity, and a bound on what a FIFO or a
/// device file named as a bank can make us read.
const MAX_FILE_BYTES: u64 = 1 << 32;

/// A bank file's bytes: a regular file of at most [`MAX_FILE_BYTES`].
pub fn read_bank_file(path: &Path) -> Result<Vec<u8>, BankError> {
    let io = |source| BankError::Io {
        path: path.display().to_string(),
        source,
    };
    crate::fsutil::read_regular(path, MAX_FILE_BYTES).map_err(io)
}
