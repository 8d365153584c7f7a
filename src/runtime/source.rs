//! Frame sources behind one trait: replayed images (a folder, or the synthetic conveyor) paced
//! at a frame rate, and — with the `device` feature — a V4L2 camera.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{frame_period, SourceConfig};
use super::pixels::{copy_image, decode_jpeg, encode_jpeg};
use crate::data::folder::{list_images, load_rgb};
use crate::data::synthetic::{products, Product};

/// What a part really was, when the source knows (replays of generated parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truth {
    pub product: usize,
    pub defective: bool,
}

/// One captured frame; sources write into it so that its buffers are reused.
pub struct Frame {
    /// The pixels: what the source delivered, or — for a JPEG frame — where it is decoded.
    pub image: RgbImage,
    /// The compressed frame as captured, when `jpeg` (MJPEG cameras, JPEG replays).
    pub encoded: Vec<u8>,
    pub jpeg: bool,
    pub captured: Instant,
    pub sequence: u64,
    pub truth: Option<Truth>,
}

impl Frame {
    pub fn new() -> Frame {
        Frame {
            image: RgbImage::new(0, 0),
            encoded: Vec::new(),
            jpeg: false,
            captured: Instant::now(),
            sequence: 0,
            truth: None,
        }
    }

    /// Makes `image` hold the frame's pixels, decoding a JPEG frame into the reused buffer.
    pub fn decode(&mut self) -> Result<()> {
        if self.jpeg {
            decode_jpeg(&self.encoded, &mut self.image)?;
        }
        Ok(())
    }

    /// Sizes this frame's buffers like `other`'s, so that frames sized on the first frame do
    /// not allocate on a later one.
    pub(crate) fn size_like(&mut self, other: &Frame) {
        copy_image(&other.image, &mut self.image);
        self.encoded.reserve(other.encoded.capacity());
    }

    fn set_pixels(&mut self, pixels: &RgbImage) {
        copy_image(pixels, &mut self.image);
        self.jpeg = false;
    }

    /// Stores a compressed frame (decoded later by [`Frame::decode`]).
    pub fn set_jpeg(&mut self, bytes: &[u8]) {
        self.encoded.clear();
        self.encoded.extend_from_slice(bytes);
        self.jpeg = true;
    }
}

impl Default for Frame {
    fn default() -> Frame {
        Frame::new()
    }
}

pub trait FrameSource: Send {
    /// Waits for the next frame and writes it into `frame`; `Ok(false)` when a finite source ends.
    fn next(&mut self, frame: &mut Frame) -> Result<bool>;

    /// Frames the source lost so far (a camera's skipped sequence numbers).
    fn dropped(&self) -> u64 {
        0
    }
}

/// A replayed frame as stored: pixels, or a JPEG file kept compressed like a camera's MJPEG.
pub(crate) enum Clip {
    Pixels(RgbImage),
    Jpeg(Vec<u8>),
}

/// Frames held in memory, captured at `fps` from the first call on. A consumer that falls behind
/// gets frames with their original capture times (as from a camera's buffer queue).
pub struct Replay {
    clips: Vec<(Clip, Option<Truth>)>,
    order: Box<dyn FnMut(u64) -> Option<usize> + Send>,
    period: Duration,
    start: Option<Instant>,
    sequence: u64,
    /// The largest compressed clip: a frame's buffer is sized for it once.
    largest_jpeg: usize,
}

impl Replay {
    /// `order` maps a frame's sequence number to the clip shown (`None` ends the replay).
    fn new(
        clips: Vec<(Clip, Option<Truth>)>,
        order: impl FnMut(u64) -> Option<usize> + Send + 'static,
        fps: f64,
    ) -> Result<Replay> {
        let largest_jpeg = clips
            .iter()
            .map(|(clip, _)| match clip {
                Clip::Jpeg(bytes) => bytes.len(),
                Clip::Pixels(_) => 0,
            })
            .max()
            .unwrap_or(0);
        Ok(Replay {
            largest_jpeg,
            clips,
            order: Box::new(order),
            period: frame_period(fps)?,
            start: None,
            sequence: 0,
        })
    }

    fn next_clip(&mut self) -> Option<usize> {
        (self.order)(self.sequence)
    }
}

impl FrameSource for Replay {
    fn next(&mut self, frame: &mut Frame) -> Result<bool> {
        let Some(clip) = self.next_clip() else { return Ok(false) };
        let start = *self.start.get_or_insert_with(Instant::now);
        let due = start + self.period.mul_f64(self.sequence as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        frame
            .encoded
            .reserve(self.largest_jpeg.saturating_sub(frame.encoded.len()));
        let (content, truth) = &self.clips[clip];
        match content {
            Clip::Pixels(image) => frame.set_pixels(image),
            Clip::Jpeg(bytes) => frame.set_jpeg(bytes),
        }
        frame.captured = due;
        frame.sequence = self.sequence;
        frame.truth = *truth;
        self.sequence += 1;
        Ok(true)
    }
}

/// Generated parts on a conveyor: runs of `run_length` parts of one product, then the next
/// product; each part defective with probability 1/`defect_every` (seeded). Parts are rendered
/// at start-up from image indices the training images do not use.
pub fn conveyor(config: &SourceConfig) -> Result<Replay> {
    let SourceConfig::Conveyor {
        fps,
        products: count,
        seed,
        run_length,
        defect_every,
        size,
        train_images,
        mjpeg,
    } = *config
    else {
        bail!("not a conveyor source");
    };
    const VARIANTS: usize = 8;
    let line = products(count, seed);
    let clip = |image: RgbImage| -> Result<Clip> {
        Ok(if mjpeg {
            Clip::Jpeg(encode_jpeg(&image)?)
        } else {
            Clip::Pixels(image)
        })
    };
    let mut clips = Vec::with_capacity(count * 2 * VARIANTS);
    for (p, product) in line.iter().enumerate() {
        for v in 0..VARIANTS {
            for (image, defective) in [
                (product.normal(size, train_images + v), false),
                (product.defective(size, v).0, true),
            ] {
                clips.push((clip(image)?, Some(Truth { product: p, defective })));
            }
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc0ffee);
    let order = move |sequence: u64| {
        let product = (sequence as usize / run_length) % count;
        let defective = rng.random_range(0..defect_every) == 0;
        let variant = rng.random_range(0..VARIANTS);
        Some((product * VARIANTS + variant) * 2 + defective as usize)
    };
    Replay::new(clips, order, fps)
}

/// The products of a conveyor source, for learning them.
pub(crate) fn conveyor_products(config: &SourceConfig) -> Result<Vec<Product>> {
    match *config {
        SourceConfig::Conveyor {
            products: count, seed, ..
        } => Ok(products(count, seed)),
        _ => bail!("only a conveyor source has generated products to learn"),
    }
}

/// The images of a folder in name order (loaded at start-up), once or looping.
pub fn folder(path: &Path, fps: f64, repeat: bool) -> Result<Replay> {
    let files = list_images(path)?;
    const MAX_IMAGES: usize = 10_000;
    ensure!(
        files.len() <= MAX_IMAGES,
        "{}: more than {MAX_IMAGES} images to replay",
        path.display()
    );
    let clips: Vec<(Clip, Option<Truth>)> = files
        .iter()
        .map(|f| Ok((folder_clip(f)?, None)))
        .collect::<Result<_>>()?;
    let count = clips.len() as u64;
    let order = move |sequence: u64| (repeat || sequence < count).then_some((sequence % count) as usize);
    Replay::new(clips, order, fps)
}

/// JPEG files stay compressed (decoded per frame, as from an MJPEG camera) but are decoded once
/// now, so that a damaged one is named at start-up rather than failing a frame; other formats
/// are decoded now.
fn folder_clip(path: &Path) -> Result<Clip> {
    let is_jpeg = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"));
    Ok(if is_jpeg {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        decode_jpeg(&bytes, &mut RgbImage::new(0, 0))
            .with_context(|| format!("{}: cannot be replayed", path.display()))?;
        Clip::Jpeg(bytes)
    } else {
        Clip::Pixels(load_rgb(path)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_jpeg_in_a_replay_folder_is_named_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let image = RgbImage::from_pixel(16, 16, image::Rgb([90, 120, 150]));
        let jpeg = encode_jpeg(&image).unwrap();
        std::fs::write(dir.path().join("a.jpg"), &jpeg).unwrap();
        assert!(folder(dir.path(), 10.0, false).is_ok());
        std::fs::write(dir.path().join("b.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
        let err = format!("{:#}", folder(dir.path(), 10.0, false).err().unwrap());
        assert!(err.contains("b.jpg") && err.contains("truncated"), "{err}");
    }
}
