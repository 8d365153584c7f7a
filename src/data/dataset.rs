//! Anomaly-detection datasets on disk: the MVTec AD layout and the VisA layout (split csv).
//! Every test image of a defect must have its mask; every problem names the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use image::GrayImage;

use super::folder::list_images;

/// The name test items of normal parts carry as their defect.
pub(crate) const GOOD: &str = "good";

#[derive(Debug, Clone)]
pub struct TestItem {
    pub image: PathBuf,
    /// Ground-truth mask; `None` for normal parts.
    pub mask: Option<PathBuf>,
    /// Defect type (the MVTec folder name), or [`GOOD`].
    pub defect: String,
}

impl TestItem {
    pub(crate) fn is_anomalous(&self) -> bool {
        self.defect != GOOD
    }
}

/// One product: normal training images and a labelled test set.
#[derive(Debug, Clone)]
pub struct TaskData {
    pub name: String,
    pub train: Vec<PathBuf>,
    pub test: Vec<TestItem>,
}

const VISA_SPLIT: &str = "split_csv/1cls.csv";

/// Reads task `name` under `root`: VisA when `root/split_csv/1cls.csv` exists, else MVTec AD.
pub fn load_task(root: &Path, name: &str) -> Result<TaskData> {
    let split = root.join(VISA_SPLIT);
    if split.is_file() {
        visa(root, &split, name)
    } else {
        mvtec(&root.join(name), name)
    }
}

/// `<dir>/train/good`, `<dir>/test/<defect>`, `<dir>/ground_truth/<defect>/<stem>_mask.png`.
pub(crate) fn mvtec(dir: &Path, name: &str) -> Result<TaskData> {
    ensure!(
        dir.is_dir(),
        "{}: no such dataset folder (expected the MVTec AD layout)",
        dir.display()
    );
    let train = list_images(&dir.join("train/good")).context("training images (MVTec AD layout)")?;
    let test_dir = dir.join("test");
    let mut defects: Vec<String> = std::fs::read_dir(&test_dir)
        .with_context(|| format!("cannot read folder {}", test_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    defects.sort();
    ensure!(
        defects.iter().any(|d| d == GOOD),
        "{}: no test/good folder",
        dir.display()
    );
    let mut test = Vec::new();
    for defect in defects {
        for image in list_images(&test_dir.join(&defect))? {
            let mask = if defect == GOOD {
                None
            } else {
                Some(mvtec_mask(dir, &defect, &image)?)
            };
            test.push(TestItem {
                image,
                mask,
                defect: defect.clone(),
            });
        }
    }
    Ok(TaskData {
        name: name.to_string(),
        train,
        test,
    })
}

fn mvtec_mask(dir: &Path, defect: &str, image: &Path) -> Result<PathBuf> {
    let stem = image.file_stem().expect("listed files have names").to_string_lossy();
    let mask = dir.join("ground_truth").join(defect).join(format!("{stem}_mask.png"));
    ensure!(
        mask.is_file(),
        "{}: defective test image without a mask (expected {})",
        image.display(),
        mask.display()
    );
    Ok(mask)
}

#[derive(serde::Deserialize)]
struct VisaRow {
    object: String,
    split: String,
    label: String,
    image: String,
    #[serde(default)]
    mask: String,
}

/// VisA: rows `object,split,label,image,mask` with paths relative to `root`.
fn visa(root: &Path, split: &Path, name: &str) -> Result<TaskData> {
    let mut reader = csv::Reader::from_path(split).with_context(|| format!("cannot read {}", split.display()))?;
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (line, row) in reader.deserialize::<VisaRow>().enumerate() {
        let row = row.with_context(|| format!("{}: row {} does not parse", split.display(), line + 2))?;
        if row.object != name {
            continue;
        }
        let image = root.join(&row.image);
        ensure!(
            image.is_file(),
            "{}: row {} names a missing image {}",
            split.display(),
            line + 2,
            image.display()
        );
        let anomalous = match row.label.as_str() {
            "normal" => false,
            "anomaly" => true,
            other => bail!(
                "{}: row {}: label {other:?} is neither normal nor anomaly",
                split.display(),
                line + 2
            ),
        };
        match (row.split.as_str(), anomalous) {
            ("train", false) => train.push(image),
            ("train", true) => {} // UCAD learns from normal images only.
            ("test", false) => test.push(TestItem {
                image,
                mask: None,
                defect: GOOD.into(),
            }),
            ("test", true) => {
                ensure!(
                    !row.mask.is_empty(),
                    "{}: defective test image without a mask",
                    image.display()
                );
                let mask = root.join(&row.mask);
                ensure!(
                    mask.is_file(),
                    "{}: mask {} is missing",
                    image.display(),
                    mask.display()
                );
                test.push(TestItem {
                    image,
                    mask: Some(mask),
                    defect: "anomaly".into(),
                });
            }
            (other, _) => bail!(
                "{}: row {}: split {other:?} is neither train nor test",
                split.display(),
                line + 2
            ),
        }
    }
    ensure!(
        !train.is_empty(),
        "{}: no normal training images of {name:?}",
        split.display()
    );
    ensure!(!test.is_empty(), "{}: no test images of {name:?}", split.display());
    Ok(TaskData {
        name: name.to_string(),
        train,
        test,
    })
}

/// `item`'s ground-truth mask (`None` for a normal part), checked to have its image's size.
pub(crate) fn read_mask(item: &TestItem, image_dims: (u32, u32)) -> Result<Option<GrayImage>> {
    let Some(path) = &item.mask else {
        return Ok(None);
    };
    let mask = image::open(path)
        .with_context(|| format!("cannot read mask {}", path.display()))?
        .to_luma8();
    ensure!(
        mask.dimensions() == image_dims,
        "{}: mask is {}×{} but its image {} is {}×{}",
        path.display(),
        mask.width(),
        mask.height(),
        item.image.display(),
        image_dims.0,
        image_dims.1
    );
    Ok(Some(mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::GrayImage::new(w, h).save(path).unwrap();
    }

    #[test]
    fn visa_split_is_read_and_anomalous_training_rows_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "candle/Normal/0.png",
            "candle/Normal/1.png",
            "candle/Anomaly/2.png",
            "candle/Masks/2.png",
        ] {
            write_png(&dir.path().join(f), 8, 8);
        }
        std::fs::create_dir_all(dir.path().join("split_csv")).unwrap();
        std::fs::write(
            dir.path().join(VISA_SPLIT),
            "object,split,label,image,mask\ncandle,train,normal,candle/Normal/0.png,\n\
             candle,test,normal,candle/Normal/1.png,\ncandle,test,anomaly,candle/Anomaly/2.png,candle/Masks/2.png\n\
             other,train,normal,nowhere.png,\n",
        )
        .unwrap();
        let task = load_task(dir.path(), "candle").unwrap();
        assert_eq!(task.train.len(), 1);
        assert_eq!(task.test.iter().filter(|t| t.is_anomalous()).count(), 1);
        assert_eq!(task.test.len(), 2);
    }

    #[test]
    fn mvtec_defect_without_mask_is_an_error_naming_the_image() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["p/train/good/0.png", "p/test/good/1.png", "p/test/crack/2.png"] {
            write_png(&dir.path().join(f), 8, 8);
        }
        let err = format!("{:#}", load_task(dir.path(), "p").unwrap_err());
        assert!(err.contains("crack/2.png") && err.contains("without a mask"), "{err}");
    }
}
