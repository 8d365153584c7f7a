//! Patch features saved on one machine and compared on another: the proof that a build for
//! another CPU (the ARM device build, under emulation in CI) computes the features x86 computes.
//! A safetensors file with one [patches, dim] f32 tensor per image, named as the image was given,
//! and the sha256 of the backbone file that computed them.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use super::parity::{token_cosines, CosineStats};

const SHA_KEY: &str = "backbone_sha256";
/// The largest features file read (about 1,700 CLIP images): a bound on what a FIFO or a device
/// file named as one can make us read.
const MAX_FILE_BYTES: u64 = 1 << 30;

/// The features of one image: its name and its row-major [patches, dim] values.
pub type ImageFeatures = (String, Vec<f32>);

pub fn save(path: &Path, backbone_sha256: &str, dim: usize, images: &[ImageFeatures]) -> Result<()> {
    let mut names = HashSet::new();
    if let Some((name, _)) = images.iter().find(|(name, _)| !names.insert(name.as_str())) {
        bail!("{name} is given twice: a features file holds each image once");
    }
    let bytes: Vec<(&str, Vec<u8>, Vec<usize>)> = images
        .iter()
        .map(|(name, f)| {
            (
                name.as_str(),
                f.iter().flat_map(|v| v.to_le_bytes()).collect(),
                vec![f.len() / dim, dim],
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, shape)| Ok((*name, TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([(SHA_KEY.to_string(), backbone_sha256.to_string())]);
    crate::fsutil::write_atomic(path, &safetensors::serialize(views, Some(metadata))?)
}

/// Per-patch cosines of `images` against the same images' features in the file at `path`,
/// which must come from the same backbone file.
pub fn compare(path: &Path, backbone_sha256: &str, dim: usize, images: &[ImageFeatures]) -> Result<Vec<CosineStats>> {
    let bytes = crate::fsutil::read_regular(path, MAX_FILE_BYTES)
        .with_context(|| format!("cannot read features {}", path.display()))?;
    let saved = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a features file (safetensors)", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
    let recorded = header.metadata().as_ref().and_then(|m| m.get(SHA_KEY));
    ensure!(
        recorded.map(String::as_str) == Some(backbone_sha256),
        "{}: features of backbone {}, not of this one ({backbone_sha256})",
        path.display(),
        recorded.map_or("(none recorded)", String::as_str)
    );
    images
        .iter()
        .map(|(name, got)| {
            let view = saved
                .tensor(name)
                .with_context(|| format!("{}: no features of {name}", path.display()))?;
            if view.dtype() != Dtype::F32 || view.shape() != [got.len() / dim, dim] {
                bail!(
                    "{}: features of {name} are {:?} {:?}, not F32 [{}, {dim}]",
                    path.display(),
                    view.dtype(),
                    view.shape(),
                    got.len() / dim
                );
            }
            let want: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            // A NaN cosine would be passed over by the minimum: a non-finite feature fails here.
            ensure!(
                want.iter().all(|v| v.is_finite()),
                "{}: saved features of {name} are not all finite",
                path.display()
            );
            ensure!(
                got.iter().all(|v| v.is_finite()),
                "features of {name} computed here are not all finite (NaN or infinite)"
            );
            Ok(token_cosines(got, &want, dim))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> Vec<ImageFeatures> {
        let f = |seed: f32| (0..12).map(|i| (i as f32 * 0.37 + seed).sin()).collect();
        vec![("a/1.jpg".into(), f(0.0)), ("b/2.jpg".into(), f(1.0))]
    }

    #[test]
    fn saved_features_compare_equal_and_a_changed_patch_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.safetensors");
        save(&path, "abc", 4, &images()).unwrap();
        let same = compare(&path, "abc", 4, &images()).unwrap();
        assert!(same.iter().all(|s| s.min_cosine > 0.999_999 && s.max_abs_diff == 0.0));
        let mut changed = images();
        changed[1].1[5] += 1.0;
        let stats = compare(&path, "abc", 4, &changed).unwrap();
        assert!(stats[0].min_cosine > 0.999_999);
        assert!(stats[1].min_cosine < 0.99, "{:?}", stats[1]);
        assert!(stats[1].mean_cosine > stats[1].min_cosine);
    }

    #[test]
    fn another_backbone_a_missing_image_another_shape_or_a_nan_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.safetensors");
        save(&path, "abc", 4, &images()).unwrap();
        let err = compare(&path, "def", 4, &images()).unwrap_err().to_string();
        assert!(err.contains("features of backbone abc, not of this one (def)"), "{err}");
        let mut other = images();
        other[0].0 = "c/3.jpg".into();
        let err = compare(&path, "abc", 4, &other).unwrap_err().to_string();
        assert!(err.contains("no features of c/3.jpg"), "{err}");
        let err = compare(&path, "abc", 6, &images()).unwrap_err().to_string();
        assert!(err.contains("not F32 [2, 6]"), "{err}");
        let mut broken = images();
        broken[1].1[3] = f32::NAN;
        let err = compare(&path, "abc", 4, &broken).unwrap_err().to_string();
        assert!(
            err.contains("features of b/2.jpg computed here are not all finite"),
            "{err}"
        );
        save(&path, "abc", 4, &broken).unwrap();
        let err = compare(&path, "abc", 4, &images()).unwrap_err().to_string();
        assert!(err.contains("saved features of b/2.jpg are not all finite"), "{err}");
        std::fs::write(&path, b"junk").unwrap();
        let err = format!("{:#}", compare(&path, "abc", 4, &images()).unwrap_err());
        assert!(err.contains("not a features file"), "{err}");
    }
}
