//! One picture of a judgement, drawn the same way by `ucad score`, `ucad eval`, the audit store
//! and the device's status page: the frame as captured, beside the same frame with the anomaly
//! map laid over it — mapped back through the preprocessing (squash or centre crop), so that it
//! lies on the part at the frame's own resolution and aspect — the region above the threshold
//! outlined, a caption (product, score against threshold, decision) and a colour legend.
//!
//! Colours are in threshold units, `(score − threshold) / threshold`: 0 is the decision
//! boundary, −1 a score of zero, +1 twice the threshold. The colour map is inferno
//! (perceptually uniform), transparent up to −0.3 so that clearly normal regions show the
//! part itself.

use std::path::Path;

use anyhow::{ensure, Result};
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};

use super::text;
use crate::backbone::preprocess::ViewGeometry;
use crate::data::folder::save_image;
use crate::detect::map::anomaly_map;
use crate::detect::{Detector, Judgement};

/// Legend ends, in threshold units.
const LEGEND: (f32, f32) = (-1.0, 1.0);
/// Below this level the map is transparent (normal parts mostly score within 0.3 below the
/// threshold; fainter than that is the part itself).
const CLEAR_BELOW: f32 = -0.3;
const MAX_ALPHA: f32 = 0.7;
const OUTLINE: Rgb<u8> = Rgb([0, 229, 255]);
const PAPER: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([29, 35, 42]);
const REJECT_INK: Rgb<u8> = Rgb([196, 30, 30]);
/// Narrower frames are magnified (whole pixels) to at least this width, so that the caption and
/// the legend fit beside them.
const MIN_PANEL: u32 = 240;
/// Larger frames are shown at most this large (a side), which bounds a picture's memory.
const MAX_PANEL: u32 = 2048;

/// What a picture's caption says.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The judging product (for an unknown product: the nearest one).
    pub product: String,
    pub unknown: bool,
    pub score: f32,
    pub threshold: f32,
    pub rejected: bool,
}

impl Verdict {
    pub fn of(detector: &Detector, judgement: &Judgement) -> Verdict {
        Verdict {
            product: detector.tasks()[judgement.task].name.clone(),
            unknown: judgement.unknown,
            score: judgement.score,
            threshold: judgement.threshold,
            rejected: judgement.rejected(),
        }
    }

    /// `REJECT +0.23 (score 4.906, threshold 3.990) hazelnut`: the decision first, so that a
    /// long product name cut at the picture's edge never hides it.
    pub fn caption(&self) -> String {
        let product = match self.unknown {
            true => format!("unknown product (nearest {})", self.product),
            false => self.product.clone(),
        };
        format!(
            "{} {:+.2} (score {:.3}, threshold {:.3}) {product}",
            if self.rejected { "REJECT" } else { "pass" },
            in_thresholds(self.score - self.threshold, self.threshold),
            self.score,
            self.threshold,
        )
    }
}

/// `relative` (a score minus the threshold) in threshold units.
fn in_thresholds(relative: f32, threshold: f32) -> f32 {
    relative / threshold.abs().max(f32::EPSILON)
}

/// A judgement's patch scores (minus the threshold) as seen from a frame's pixels: the anomaly
/// map (up-sampled and blurred, as the metrics see it) gives the colours, and the outline takes
/// in the patches above the threshold themselves too, so that a part rejected on one patch whose
/// peak the blur flattens still shows where.
pub struct FrameMap {
    map: Vec<f32>,
    patches: Vec<f32>,
    grid: usize,
    geometry: ViewGeometry,
    threshold: f32,
}

impl FrameMap {
    pub fn new(patches: &[f32], geometry: ViewGeometry, threshold: f32) -> Result<FrameMap> {
        let grid = (patches.len() as f64).sqrt().round() as usize;
        ensure!(
            grid > 0 && grid * grid == patches.len(),
            "{} patch scores do not make a square grid",
            patches.len()
        );
        Ok(FrameMap {
            map: anomaly_map(patches, grid, geometry.size as usize),
            patches: patches.to_vec(),
            grid,
            geometry,
            threshold,
        })
    }

    /// The same map over the frame shown at another size.
    fn shown_at(&self, size: (u32, u32)) -> FrameMap {
        FrameMap {
            map: self.map.clone(),
            patches: self.patches.clone(),
            geometry: self.geometry.shown_at(size),
            ..*self
        }
    }

    /// The map at frame pixel (`x`, `y`) in threshold units (bilinear) and whether its patch
    /// is above the threshold; `None` where the network does not see the frame.
    pub fn level(&self, x: u32, y: u32) -> Option<(f32, bool)> {
        let (u, v) = self.geometry.to_view(x, y)?;
        let side = self.geometry.size as usize;
        let last = side - 1;
        let corner = |c: f32| {
            let c = c.clamp(0.0, last as f32);
            let low = c.floor() as usize;
            (low, (low + 1).min(last), c - low as f32)
        };
        let ((x0, x1, fx), (y0, y1, fy)) = (corner(u), corner(v));
        let at = |x: usize, y: usize| self.map[y * side + x];
        let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
        let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
        let cell = |c: f32| (((c + 0.5) * self.grid as f32 / side as f32) as usize).min(self.grid - 1);
        let patch = self.patches[cell(v) * self.grid + cell(u)];
        Some((
            in_thresholds(top * (1.0 - fy) + bottom * fy, self.threshold),
            patch > 0.0,
        ))
    }

    /// Frame pixels the outline takes in, row by row: where the map or the patch is above the
    /// threshold.
    pub fn flagged(&self) -> Vec<bool> {
        let (w, h) = self.geometry.frame;
        (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| outlined(self.level(x, y)))
            .collect()
    }
}

/// The picture: frame | frame with map and outline, caption and legend below.
pub fn render(frame: &RgbImage, map: &FrameMap, verdict: &Verdict) -> Result<RgbImage> {
    render_within(frame, map, verdict, MAX_PANEL)
}

/// [`render`] with the frame shown within a `bound`×`bound` square (a thumbnail).
pub fn render_within(frame: &RgbImage, map: &FrameMap, verdict: &Verdict, bound: u32) -> Result<RgbImage> {
    let (w, h) = frame.dimensions();
    ensure!(
        (w, h) == map.geometry.frame,
        "a map laid out for a {}×{} frame over a {w}×{h} one",
        map.geometry.frame.0,
        map.geometry.frame.1
    );
    let shown = shown_size(w, h, bound.min(MAX_PANEL));
    if shown != (w, h) {
        let filter = if shown.0 > w {
            FilterType::Nearest
        } else {
            FilterType::Triangle
        };
        let frame = imageops::resize(frame, shown.0, shown.1, filter);
        return render_within(&frame, &map.shown_at(shown), verdict, bound);
    }
    let scale = (2 * w / 560).max(1);
    let pad = 4 * scale;
    let line = (text::GLYPH + 4) * scale;
    // A sliver of a frame still gets room for its caption and legend.
    let width = (3 * pad + 2 * w).max(2 * pad + 2 * MIN_PANEL);
    let height = 2 * pad + h + line + legend_height(scale) + pad;
    let mut out = RgbImage::from_pixel(width, height, PAPER);
    imageops::replace(&mut out, frame, pad as i64, pad as i64);
    draw_map(&mut out, frame, map, (2 * pad + w, pad), scale);
    let mut y = 2 * pad + h;
    let ink = if verdict.rejected { REJECT_INK } else { INK };
    text::draw(&mut out, (pad, y), scale, &verdict.caption(), ink, width - pad);
    y += line;
    draw_legend(&mut out, (pad, y), width - 2 * pad, scale);
    Ok(out)
}

pub fn save(path: &Path, frame: &RgbImage, map: &FrameMap, verdict: &Verdict) -> Result<()> {
    save_image(&render(frame, map, verdict)?, path)
}

/// The size a `w`×`h` frame is shown at within a `bound`×`bound` square: its own, magnified by
/// whole pixels when narrower than [`MIN_PANEL`] (never beyond the bound), or shrunk to fit.
fn shown_size(w: u32, h: u32, bound: u32) -> (u32, u32) {
    let longest = w.max(h);
    if longest > bound {
        let fit = |side: u32| ((side as u64 * bound as u64 / longest as u64) as u32).max(1);
        return (fit(w), fit(h));
    }
    let zoom = MIN_PANEL.div_ceil(w).min(bound / longest).max(1);
    (w * zoom, h * zoom)
}

/// The frame with the map blended over it at `at`, pixels the network does not see dimmed; then
/// the outline around what [`FrameMap::flagged`] takes in. Each pixel's level is read once.
fn draw_map(out: &mut RgbImage, frame: &RgbImage, map: &FrameMap, at: (u32, u32), scale: u32) {
    let (w, h) = frame.dimensions();
    let mut flagged = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let level = map.level(x, y);
            flagged.push(outlined(level));
            let base = frame.get_pixel(x, y);
            let pixel = match level {
                Some((level, _)) => blend(base, colour(level), alpha(level)),
                None => blend(base, INK, 0.65),
            };
            out.put_pixel(at.0 + x, at.1 + y, pixel);
        }
    }
    let is_flagged = |x: i64, y: i64| {
        (0..w as i64).contains(&x) && (0..h as i64).contains(&y) && flagged[(y * w as i64 + x) as usize]
    };
    let reach = scale as i64 + 1;
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let edge = (1..=reach).any(|d| {
                !is_flagged(x - d, y) || !is_flagged(x + d, y) || !is_flagged(x, y - d) || !is_flagged(x, y + d)
            });
            if is_flagged(x, y) && edge {
                out.put_pixel(at.0 + x as u32, at.1 + y as u32, OUTLINE);
            }
        }
    }
}

/// Whether the outline takes in a pixel at `level` ([`FrameMap::level`]).
fn outlined(level: Option<(f32, bool)>) -> bool {
    level.is_some_and(|(level, patch)| level > 0.0 || patch)
}

/// The colour bar from −1 to +1 threshold units with its ticks, and what the colours mean.
fn draw_legend(out: &mut RgbImage, (left, top): (u32, u32), width: u32, scale: u32) {
    let bar = 6 * scale;
    let backdrop = Rgb([128, 128, 128]);
    let level_at = |x: u32| LEGEND.0 + (LEGEND.1 - LEGEND.0) * x as f32 / (width - 1).max(1) as f32;
    for x in 0..width {
        let level = level_at(x);
        let pixel = blend(&backdrop, colour(level), alpha(level));
        for y in 0..bar {
            out.put_pixel(left + x, top + y, pixel);
        }
    }
    let labels_y = top + bar + 2 * scale;
    for (level, label) in [
        (-1.0, "-1"),
        (-0.5, "-0.5"),
        (0.0, "0 threshold"),
        (0.5, "+0.5"),
        (1.0, "+1"),
    ] {
        let x = left + ((level - LEGEND.0) / (LEGEND.1 - LEGEND.0) * (width - 1) as f32) as u32;
        let tick = if level == 0.0 { 2 * scale } else { scale };
        for ty in top..top + bar + scale {
            for tx in x.saturating_sub(tick / 2)..(x + tick.div_ceil(2)).min(left + width) {
                out.put_pixel(tx, ty, INK);
            }
        }
        let label_w = text::width(label, scale);
        let start = x
            .saturating_sub(label_w / 2)
            .clamp(left, (left + width).saturating_sub(label_w));
        text::draw(out, (start, labels_y), scale, label, INK, left + width);
    }
    let keys = [
        "colour: (score - threshold) / threshold",
        "cyan outline: above the threshold",
    ];
    for (i, key) in keys.iter().enumerate() {
        let y = labels_y + (i as u32 + 1) * (text::GLYPH + 4) * scale;
        text::draw(out, (left, y), scale, key, INK, left + width);
    }
}

/// Bar, tick labels and two key lines.
fn legend_height(scale: u32) -> u32 {
    (6 + 2 + 3 * (text::GLYPH + 4)) * scale
}

fn colour(level: f32) -> Rgb<u8> {
    let t = ((level - LEGEND.0) / (LEGEND.1 - LEGEND.0)).clamp(0.0, 1.0);
    let c = colorous::INFERNO.eval_continuous(t as f64);
    Rgb([c.r, c.g, c.b])
}

fn alpha(level: f32) -> f32 {
    ((level - CLEAR_BELOW) / -CLEAR_BELOW).clamp(0.0, 1.0) * MAX_ALPHA
}

fn blend(base: &Rgb<u8>, over: Rgb<u8>, alpha: f32) -> Rgb<u8> {
    Rgb(std::array::from_fn(|c| {
        (base[c] as f32 * (1.0 - alpha) + over[c] as f32 * alpha).round() as u8
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::{BackboneMeta, Preprocessor, Resize};
    use image::{GrayImage, Luma};

    fn preprocessor(resize: Resize) -> Preprocessor {
        let (_, backbone) = crate::backbone::testing::tiny_backbone(1);
        Preprocessor::new(&BackboneMeta {
            resize,
            input_size: 224,
            ..backbone.meta
        })
    }

    /// A map that is +1 threshold on the view's pixels of a frame rectangle and −1 elsewhere
    /// comes back onto that rectangle of the frame, whichever way the frame was resized.
    #[test]
    fn the_flagged_region_lies_where_the_view_saw_it_under_both_resizes() {
        let (w, h) = (300u32, 180u32);
        let inside = |x: u32, y: u32| (130..190).contains(&x) && (60..125).contains(&y);
        let mask = GrayImage::from_fn(w, h, |x, y| Luma([if inside(x, y) { 255 } else { 0 }]));
        for resize in [Resize::Squash, Resize::CenterCrop] {
            let pre = preprocessor(resize);
            let threshold = 2.0;
            // Patches of 2×2 view pixels: +1 threshold on the rectangle, −1 elsewhere.
            let truth = pre.truth(Some(&mask)).unwrap();
            let patches: Vec<f32> = (0..112 * 112)
                .map(|i| {
                    if truth[(i / 112) * 2 * 224 + (i % 112) * 2] {
                        threshold
                    } else {
                        -threshold
                    }
                })
                .collect();
            let map = FrameMap::new(&patches, pre.geometry(w, h).unwrap(), threshold).unwrap();
            let flagged = map.flagged();
            let truth: Vec<bool> = (0..h).flat_map(|y| (0..w).map(move |x| inside(x, y))).collect();
            let both = flagged.iter().zip(&truth).filter(|(f, t)| **f && **t).count();
            let either = flagged.iter().zip(&truth).filter(|(f, t)| **f || **t).count();
            let iou = both as f64 / either as f64;
            assert!(iou > 0.9, "{resize:?}: IoU {iou:.3}");
            // The crop drops the frame's sides: the network never saw x = 0.
            assert_eq!(
                map.level(0, h / 2).is_none(),
                resize == Resize::CenterCrop,
                "{resize:?}"
            );
        }
    }

    #[test]
    fn the_picture_shows_the_untouched_frame_beside_the_overlay() {
        let frame = RgbImage::from_fn(320, 200, |x, y| Rgb([x as u8, y as u8, 77]));
        let pre = preprocessor(Resize::Squash);
        let map = FrameMap::new(&[1.0; 196], pre.geometry(320, 200).unwrap(), 2.0).unwrap();
        let verdict = Verdict {
            product: "part".into(),
            unknown: false,
            score: 3.0,
            threshold: 2.0,
            rejected: true,
        };
        assert_eq!(verdict.caption(), "REJECT +0.50 (score 3.000, threshold 2.000) part");
        let picture = render(&frame, &map, &verdict).unwrap();
        let pad = 4;
        assert!(picture.width() == 3 * pad + 640 && picture.height() > 200 + 2 * pad);
        let left = image::imageops::crop_imm(&picture, pad, pad, 320, 200).to_image();
        assert_eq!(left, frame);
        // Every pixel is above the threshold: the outline runs along the overlay's border.
        assert_eq!(*picture.get_pixel(2 * pad + 320, pad + 100), OUTLINE);
        assert_ne!(*picture.get_pixel(2 * pad + 480, pad + 100), OUTLINE);
        let other = FrameMap::new(&[0.0; 196], pre.geometry(60, 90).unwrap(), 2.0).unwrap();
        assert!(
            render(&frame, &other, &verdict).is_err(),
            "a map laid out for another frame size"
        );
        // A small frame is magnified by whole pixels.
        let small = image::imageops::crop_imm(&frame, 0, 0, 64, 48).to_image();
        let map = FrameMap::new(&[1.0; 196], pre.geometry(64, 48).unwrap(), 2.0).unwrap();
        let picture = render(&small, &map, &verdict).unwrap();
        assert_eq!(picture.width(), 3 * pad + 2 * 256);
        assert_eq!(
            picture.get_pixel(pad + 4 * 10 + 3, pad + 4 * 7 + 1),
            small.get_pixel(10, 7)
        );
    }

    /// The blur flattens a lone patch's peak below the threshold; the outline still takes the
    /// patch in, so a part rejected on it shows where.
    #[test]
    fn a_lone_patch_above_the_threshold_is_outlined() {
        let pre = preprocessor(Resize::Squash);
        let mut patches = vec![-1.0; 196];
        patches[5 * 14 + 9] = 0.2;
        let map = FrameMap::new(&patches, pre.geometry(224, 224).unwrap(), 2.0).unwrap();
        assert!(map.map.iter().all(|v| *v < 0.0), "the blurred map stays below");
        let flagged = map.flagged();
        let cell = |x: usize, y: usize| flagged[y * 224 + x];
        assert!(cell(9 * 16 + 8, 5 * 16 + 8) && !cell(9 * 16 + 8, 4 * 16 + 8));
        assert_eq!(flagged.iter().filter(|f| **f).count(), 16 * 16);
    }

    #[test]
    fn pictures_stay_bounded_whatever_the_frame() {
        assert_eq!(
            shown_size(1, 300, MAX_PANEL),
            (6, 1800),
            "magnified no further than the longest side allows"
        );
        assert_eq!(shown_size(64, 48, MAX_PANEL), (256, 192));
        assert_eq!(shown_size(8000, 6000, MAX_PANEL), (2048, 1536));
        assert_eq!(shown_size(5000, 1, MAX_PANEL), (2048, 1));
        assert_eq!(shown_size(640, 480, MAX_PANEL), (640, 480));
        assert_eq!(shown_size(900, 600, 320), (320, 213), "a thumbnail");
    }
}
