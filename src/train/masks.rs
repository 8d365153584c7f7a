//! Segment labels for SCL: a label map per training image (0 = unsegmented, 1.. = segments),
//! reduced to the backbone's patch grid by a majority vote per patch (ids are names, never
//! averaged). Three sources: label-map files (UCAD's format, e.g. SAM masks computed
//! elsewhere), built-in superpixels (the default), and SAM run here with user-supplied weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};
use image::{DynamicImage, ImageBuffer, Luma, RgbImage};

use crate::backbone::Preprocessor;

/// One label per pixel of the network's S×S view (or of a grid covering that view).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    pub width: usize,
    pub height: usize,
    pub labels: Vec<u32>,
}

impl LabelMap {
    /// The most frequent label of the pixels in each cell of a grid×grid tiling (row-major);
    /// ties go to the smaller label.
    pub(crate) fn to_patches(&self, grid: usize) -> Vec<u32> {
        let mut votes: Vec<HashMap<u32, usize>> = vec![HashMap::new(); grid * grid];
        for y in 0..self.height {
            let row = y * grid / self.height;
            for x in 0..self.width {
                let cell = row * grid + x * grid / self.width;
                *votes[cell].entry(self.labels[y * self.width + x]).or_default() += 1;
            }
        }
        votes
            .iter()
            .map(|cell| {
                cell.iter()
                    .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                    .map_or(0, |(label, _)| *label)
            })
            .collect()
    }

    /// Paints binary masks (row-major, width×height) largest first with ids 1, 2, …, so that
    /// smaller masks lie on top; pixels no mask covers stay 0 (UCAD's label-map format).
    pub(crate) fn paint(width: usize, height: usize, mut masks: Vec<Vec<bool>>) -> LabelMap {
        masks.sort_by_key(|m| std::cmp::Reverse(m.iter().filter(|p| **p).count()));
        let mut labels = vec![0u32; width * height];
        for (id, mask) in masks.iter().enumerate() {
            for (label, _) in labels.iter_mut().zip(mask).filter(|(_, on)| **on) {
                *label = id as u32 + 1;
            }
        }
        LabelMap { width, height, labels }
    }
}

/// Where segment labels come from.
pub trait Segmenter: Sync {
    /// The label map of `view`, the S×S image the network sees of the training image `path`.
    fn segment(&self, path: &Path, view: &RgbImage, pre: &Preprocessor) -> Result<LabelMap>;
}

/// `--masks`: `superpixel`, `sam:WEIGHTS.safetensors`, or a folder of label maps.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskSource {
    Superpixel,
    Sam(PathBuf),
    Folder(PathBuf),
}

impl FromStr for MaskSource {
    type Err = String;

    fn from_str(s: &str) -> Result<MaskSource, String> {
        Ok(match s {
            "superpixel" => MaskSource::Superpixel,
            _ => match s.strip_prefix("sam:") {
                Some(weights) => MaskSource::Sam(PathBuf::from(weights)),
                None => MaskSource::Folder(PathBuf::from(s)),
            },
        })
    }
}

impl std::fmt::Display for MaskSource {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            MaskSource::Superpixel => write!(f, "superpixel"),
            MaskSource::Sam(weights) => write!(f, "sam:{}", weights.display()),
            MaskSource::Folder(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// SLIC superpixels on the network's view: weight-free and deterministic. 16 segments of about
/// 12 patches each on a 14×14 grid; compactness 10 (CIELAB units) lets them follow colour edges.
pub(crate) struct Superpixels {
    pub segments: u32,
    pub compactness: u8,
}

impl Default for Superpixels {
    fn default() -> Superpixels {
        Superpixels {
            segments: 16,
            compactness: 10,
        }
    }
}

impl Segmenter for Superpixels {
    fn segment(&self, path: &Path, view: &RgbImage, _: &Preprocessor) -> Result<LabelMap> {
        let (w, h) = view.dimensions();
        let ids = simple_clustering::slic_from_bytes(self.segments, self.compactness, w, h, None, view.as_raw())
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .with_context(|| format!("superpixels of {}", path.display()))?;
        Ok(LabelMap {
            width: w as usize,
            height: h as usize,
            labels: ids.into_iter().map(|id| id as u32 + 1).collect(),
        })
    }
}

/// UCAD's label maps: for image `x.png` (any extension), `DIR/x.png`, a single-channel 8- or
/// 16-bit PNG of the image's size (or any size of the same view) holding segment ids. It is
/// brought to the network's view like the image, by nearest neighbour.
pub(crate) struct LabelMapFolder {
    pub dir: PathBuf,
}

impl LabelMapFolder {
    fn file_for(&self, image: &Path) -> Result<PathBuf> {
        let stem = image
            .file_stem()
            .with_context(|| format!("{} has no file name", image.display()))?;
        let file = self.dir.join(stem).with_extension("png");
        ensure!(
            file.is_file(),
            "no label map {} for training image {}",
            file.display(),
            image.display()
        );
        Ok(file)
    }
}

impl Segmenter for LabelMapFolder {
    fn segment(&self, path: &Path, _: &RgbImage, pre: &Preprocessor) -> Result<LabelMap> {
        let file = self.file_for(path)?;
        let decoded = image::open(&file).with_context(|| format!("cannot read label map {}", file.display()))?;
        let ids: ImageBuffer<Luma<u16>, Vec<u16>> = match decoded {
            DynamicImage::ImageLuma8(g) => {
                ImageBuffer::from_fn(g.width(), g.height(), |x, y| Luma([g.get_pixel(x, y)[0] as u16]))
            }
            DynamicImage::ImageLuma16(g) => g,
            other => bail!(
                "label map {} must be a single-channel PNG of segment ids, not {:?}",
                file.display(),
                other.color()
            ),
        };
        let fitted = pre
            .network_view_nearest(&ids)
            .with_context(|| format!("label map {}", file.display()))?;
        Ok(LabelMap {
            width: fitted.width() as usize,
            height: fitted.height() as usize,
            labels: fitted.pixels().map(|p| u32::from(p[0])).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_take_the_majority_label_never_an_average() {
        // 4×4 pixels onto a 2×2 grid: the top-left cell has three 5s and one 1.
        let map = LabelMap {
            width: 4,
            height: 4,
            labels: vec![5, 5, 2, 2, 5, 1, 2, 2, 0, 0, 3, 3, 0, 7, 3, 7],
        };
        assert_eq!(map.to_patches(2), vec![5, 2, 0, 3]);
        // A 2–2 tie goes to the smaller label.
        let tie = LabelMap {
            width: 2,
            height: 2,
            labels: vec![4, 9, 9, 4],
        };
        assert_eq!(tie.to_patches(1), vec![4]);
    }

    #[test]
    fn masks_are_painted_largest_first_and_uncovered_pixels_stay_zero() {
        let big = vec![true, true, true, false];
        let small = vec![false, true, false, false];
        let map = LabelMap::paint(2, 2, vec![small, big]);
        assert_eq!(map.labels, vec![1, 2, 1, 0]);
    }

    #[test]
    fn label_map_files_are_read_in_the_network_geometry_and_bad_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_, backbone) = crate::backbone::testing::tiny_backbone(1);
        let pre = Preprocessor::new(&backbone.meta);
        // 64×64 map, left half segment 3, right half 0: on the 4×4 grid, two columns each.
        let map = image::GrayImage::from_fn(64, 64, |x, _| Luma([if x < 32 { 3 } else { 0 }]));
        map.save(dir.path().join("part_01.png")).unwrap();
        let folder = LabelMapFolder {
            dir: dir.path().to_path_buf(),
        };
        let view = RgbImage::new(32, 32);
        let labels = folder
            .segment(Path::new("train/part_01.jpg"), &view, &pre)
            .unwrap()
            .to_patches(4);
        assert_eq!(labels, [3, 3, 0, 0].repeat(4));
        let err = folder.segment(Path::new("train/part_02.jpg"), &view, &pre).unwrap_err();
        assert!(err.to_string().contains("part_02.png"), "{err}");
        RgbImage::new(8, 8).save(dir.path().join("part_03.png")).unwrap();
        let err = folder.segment(Path::new("part_03.jpg"), &view, &pre).unwrap_err();
        assert!(format!("{err:#}").contains("single-channel"), "{err:#}");
    }

    #[test]
    fn mask_sources_parse() {
        assert_eq!("superpixel".parse(), Ok(MaskSource::Superpixel));
        assert_eq!("sam:w.safetensors".parse(), Ok(MaskSource::Sam("w.safetensors".into())));
        assert_eq!("masks/bottle".parse(), Ok(MaskSource::Folder("masks/bottle".into())));
    }
}
