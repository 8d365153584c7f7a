//! Folders of images: listing and reading with errors that name the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{EncodableLayout, ImageBuffer, PixelWithColorType, RgbImage};

const EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// The image files directly in `dir`, sorted by name; an error when there are none.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    if files.is_empty() {
        bail!(
            "{}: no images ({}) in this folder",
            dir.display(),
            EXTENSIONS.join(", ")
        );
    }
    files.sort();
    Ok(files)
}

pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::open(path).with_context(|| format!("cannot read image {}", path.display()))?;
    if img.width() == 0 || img.height() == 0 {
        bail!("{}: image is empty", path.display());
    }
    Ok(img.to_rgb8())
}

/// Writes an image (format from the extension), creating its folder.
pub fn save_image<P>(image: &ImageBuffer<P, Vec<P::Subpixel>>, path: &Path) -> Result<()>
where
    P: PixelWithColorType,
    [P::Subpixel]: EncodableLayout,
{
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    image
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}
