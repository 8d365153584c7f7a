//! Defects drawn onto real normal images: a fit estimates from them how many defects its
//! threshold lets through, before any defective part was seen. Three kinds, each sized to the
//! image: a thin scratch darker or brighter than what it crosses, a stain that shifts the colour
//! of a small disc, and a patch of the part copied onto another place of it (a structural defect
//! in the part's own colours, as in CutPaste). Each is drawn at a strength between faint and
//! plain (uniform, [`STRENGTH`]): real defects range from barely visible to obvious, and a set of
//! obvious ones alone would promise that nothing escapes.

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::synthetic::near_polyline;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrawnDefect {
    Scratch,
    Stain,
    MovedPatch,
}

impl DrawnDefect {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DrawnDefect::Scratch => "scratch",
            DrawnDefect::Stain => "stain",
            DrawnDefect::MovedPatch => "moved_patch",
        }
    }
}

pub(crate) const DRAWN_DEFECTS: [DrawnDefect; 3] = [DrawnDefect::Scratch, DrawnDefect::Stain, DrawnDefect::MovedPatch];

/// How far a defect moves its pixels towards its own colour: from faint to full.
pub(crate) const STRENGTH: std::ops::Range<f32> = 0.1..1.0;

/// The smallest side a defect is drawn on: below it a stain would cover no pixel.
pub(crate) const MIN_SIDE: u32 = 32;

/// `image` with one defect of `kind`, placed and shaped by `seed`, in its central 70 % (where
/// the part is on most cameras' framing); `None` when a side is under [`MIN_SIDE`].
pub(crate) fn draw_defect(image: &RgbImage, kind: DrawnDefect, seed: u64) -> Option<RgbImage> {
    let mut out = image.clone();
    let (w, h) = image.dimensions();
    if w < MIN_SIDE || h < MIN_SIDE {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let side = w.min(h) as f32;
    let centre = (
        rng.random_range(0.15..0.85) * w as f32,
        rng.random_range(0.15..0.85) * h as f32,
    );
    let strength = rng.random_range(STRENGTH);
    match kind {
        DrawnDefect::Scratch => scratch(&mut out, centre, side, strength, &mut rng),
        DrawnDefect::Stain => stain(&mut out, centre, side, strength, &mut rng),
        DrawnDefect::MovedPatch => moved_patch(&mut out, image, centre, side, strength, &mut rng),
    }
    Some(out)
}

/// A straight line 15–35 % of the side long and about 1 % wide, towards the opposite brightness
/// of the pixels it crosses.
fn scratch(out: &mut RgbImage, (cx, cy): (f32, f32), side: f32, strength: f32, rng: &mut ChaCha8Rng) {
    let length = rng.random_range(0.15..0.35) * side;
    let width = (rng.random_range(0.006..0.014) * side).max(1.0);
    let angle = rng.random_range(0.0..std::f32::consts::PI);
    let (dx, dy) = (angle.cos() * length / 2.0, angle.sin() * length / 2.0);
    let (a, b) = ((cx - dx, cy - dy), (cx + dx, cy + dy));
    let covered = |x: f32, y: f32| near_polyline(&[a, b], x, y, width / 2.0);
    let target = if mean_luma(out, covered) < 128.0 {
        [235.0, 235.0, 230.0]
    } else {
        [20.0, 18.0, 16.0]
    };
    paint(out, covered, |p| towards(p, target, strength));
}

/// A disc of 3–7 % of the side whose colour moves up to 60 % of the way to a light brown (on a
/// dark part) or a dark brown (on a light one).
fn stain(out: &mut RgbImage, (cx, cy): (f32, f32), side: f32, strength: f32, rng: &mut ChaCha8Rng) {
    let radius = rng.random_range(0.03..0.07) * side;
    let covered = |x: f32, y: f32| (x - cx).powi(2) + (y - cy).powi(2) <= radius * radius;
    let target = if mean_luma(out, covered) < 128.0 {
        [200.0, 150.0, 90.0]
    } else {
        [70.0, 45.0, 25.0]
    };
    paint(out, covered, |p| towards(p, target, 0.6 * strength));
}

/// A square of 8–16 % of the side, taken from anywhere on the image, pasted at the centre
/// turned by a quarter, up to a fifth brighter where it was dark and darker where it was light:
/// on a uniform surface a moved patch alone would change nothing.
fn moved_patch(
    out: &mut RgbImage,
    image: &RgbImage,
    (cx, cy): (f32, f32),
    side: f32,
    strength: f32,
    rng: &mut ChaCha8Rng,
) {
    let (w, h) = image.dimensions();
    let size = ((rng.random_range(0.08..0.16) * side) as u32).max(2);
    let x0 = (cx as u32).saturating_sub(size / 2).min(w - size);
    let y0 = (cy as u32).saturating_sub(size / 2).min(h - size);
    let (sx, sy) = (rng.random_range(0..=w - size), rng.random_range(0..=h - size));
    let shift = |p: Rgb<u8>| {
        let target = if luma(&p) < 128.0 { 255.0 } else { 0.0 };
        towards(&p, [target; 3], 0.2 * strength)
    };
    for dy in 0..size {
        for dx in 0..size {
            let pixel = *image.get_pixel(sx + dy, sy + (size - 1 - dx));
            out.put_pixel(x0 + dx, y0 + dy, shift(pixel));
        }
    }
}

/// `p` moved `share` of the way to `target`, at least one level where it moves at all.
fn towards(p: &Rgb<u8>, target: [f32; 3], share: f32) -> Rgb<u8> {
    Rgb(std::array::from_fn(|c| {
        let (from, to) = (f32::from(p.0[c]), target[c]);
        let step = (to - from) * share;
        let step = if step.abs() < 1.0 && to != from {
            (to - from).signum()
        } else {
            step
        };
        (from + step).round().clamp(0.0, 255.0) as u8
    }))
}

fn luma(p: &Rgb<u8>) -> f32 {
    0.299 * f32::from(p.0[0]) + 0.587 * f32::from(p.0[1]) + 0.114 * f32::from(p.0[2])
}

/// Mean brightness of the pixels `covered` selects (mid-grey when it selects none).
fn mean_luma(image: &RgbImage, covered: impl Fn(f32, f32) -> bool) -> f32 {
    let (sum, count) = image
        .enumerate_pixels()
        .filter(|(x, y, _)| covered(*x as f32 + 0.5, *y as f32 + 0.5))
        .fold((0.0, 0usize), |(s, n), (_, _, p)| (s + luma(p), n + 1));
    if count == 0 {
        128.0
    } else {
        sum / count as f32
    }
}

fn paint(image: &mut RgbImage, covered: impl Fn(f32, f32) -> bool, colour: impl Fn(&Rgb<u8>) -> Rgb<u8>) {
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        if covered(x as f32 + 0.5, y as f32 + 0.5) {
            *pixel = colour(pixel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(width: u32, height: u32, level: u8) -> RgbImage {
        RgbImage::from_pixel(width, height, Rgb([level; 3]))
    }

    fn changed(a: &RgbImage, b: &RgbImage) -> usize {
        a.pixels().zip(b.pixels()).filter(|(p, q)| p != q).count()
    }

    #[test]
    fn every_kind_changes_a_small_part_of_the_image_the_same_way_for_a_seed() {
        let textured = crate::data::synthetic::textured_image(240, 160, 3);
        for kind in DRAWN_DEFECTS {
            let drawn = draw_defect(&textured, kind, 11).unwrap();
            let share = changed(&textured, &drawn) as f32 / (240.0 * 160.0);
            assert!(share > 0.001 && share < 0.05, "{kind:?}: {share}");
            assert_eq!(Some(drawn), draw_defect(&textured, kind, 11), "{kind:?}");
        }
    }

    #[test]
    fn a_scratch_moves_towards_the_opposite_brightness_at_a_strength_of_its_seed() {
        let mut faintest = u8::MAX;
        for seed in 0..40 {
            for level in [30u8, 220] {
                let drawn = draw_defect(&grey(100, 100, level), DrawnDefect::Scratch, seed).unwrap();
                let marked = drawn.pixels().find(|p| p.0[0] != level).expect("a scratch");
                assert_eq!(marked.0[0] > level, level < 128, "seed {seed}: {level} → {marked:?}");
                faintest = faintest.min(marked.0[0].abs_diff(level));
            }
        }
        // Strengths from faint to plain: some scratches barely differ from the surface.
        assert!(faintest < 60, "{faintest}");
    }

    #[test]
    fn nothing_is_drawn_on_an_image_too_small_for_every_kind() {
        for (width, height) in [(MIN_SIDE - 1, 400), (400, MIN_SIDE - 1), (1, 1)] {
            for kind in DRAWN_DEFECTS {
                assert_eq!(draw_defect(&grey(width, height, 90), kind, 1), None);
            }
        }
        let smallest = crate::data::synthetic::textured_image(MIN_SIDE, MIN_SIDE, 2);
        for kind in DRAWN_DEFECTS {
            for seed in 0..20 {
                let drawn = draw_defect(&smallest, kind, seed).unwrap();
                assert!(changed(&smallest, &drawn) > 0, "{kind:?} seed {seed}");
            }
        }
    }
}
