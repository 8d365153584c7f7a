//! Plain patch features of image lists kept on disk between benchmark runs, so that sweeps over
//! bank and routing parameters do not re-run the backbone. An entry is named by the sha256 of
//! the backbone file and of every image's path, size and modification time: any change misses.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use log::info;
use sha2::{Digest, Sha256};

use crate::backbone::extract::extract_features;
use crate::backbone::{Arithmetic, Backbone};

pub struct FeatureCache {
    dir: PathBuf,
}

impl FeatureCache {
    pub fn new(dir: &Path) -> FeatureCache {
        FeatureCache { dir: dir.to_path_buf() }
    }

    /// The features of `images`, from the cache when an entry matches, else computed and stored.
    pub fn features(&self, backbone: &Backbone, images: &[PathBuf], label: &str) -> Result<Vec<Vec<f32>>> {
        let path = self.dir.join(format!("{}.features", entry_name(backbone, images)?));
        if let Ok(bytes) = std::fs::read(&path) {
            match postcard::from_bytes::<Vec<Vec<f32>>>(&bytes) {
                Ok(features) if features.len() == images.len() => {
                    info!("{label}: features from {}", path.display());
                    return Ok(features);
                }
                _ => info!("{}: unusable cache entry, recomputing", path.display()),
            }
        }
        let features = extract_features(backbone, images, label)?;
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        crate::fsutil::write_atomic(&path, &postcard::to_allocvec(&features)?)?;
        Ok(features)
    }
}

fn entry_name(backbone: &Backbone, images: &[PathBuf]) -> Result<String> {
    let mut hash = Sha256::new();
    hash.update(backbone.file_sha256.as_bytes());
    // f32 entries keep the names they had before there was a choice.
    if backbone.arithmetic != Arithmetic::F32 {
        hash.update(backbone.arithmetic.name().as_bytes());
    }
    for image in images {
        let meta = std::fs::metadata(image).with_context(|| format!("cannot read {}", image.display()))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok());
        hash.update(image.to_string_lossy().as_bytes());
        hash.update(meta.len().to_le_bytes());
        hash.update(modified.map_or(0, |d| d.as_nanos()).to_le_bytes());
    }
    Ok(hex::encode(hash.finalize()))
}
