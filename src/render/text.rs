//! Text in pictures: the 8×8 public-domain glyphs of `font8x8`, drawn at an integer scale.
//! A bitmap font keeps captions free of font files and of a text-layout crate; ASCII is all a
//! caption needs (other characters are drawn as `?`).

use font8x8::{UnicodeFonts, BASIC_FONTS};
use image::{Rgb, RgbImage};

/// Width and height of one glyph at scale 1.
pub(crate) const GLYPH: u32 = 8;

/// Draws `text` with its top-left at (`x`, `y`), each glyph pixel a `scale`×`scale` square;
/// characters that would cross `right` are left out. Returns the x after the last one drawn.
pub(crate) fn draw(
    image: &mut RgbImage,
    (x, y): (u32, u32),
    scale: u32,
    text: &str,
    colour: Rgb<u8>,
    right: u32,
) -> u32 {
    let mut left = x;
    for c in text.chars() {
        if left + GLYPH * scale > right.min(image.width()) {
            break;
        }
        let rows = BASIC_FONTS.get(c).or_else(|| BASIC_FONTS.get('?')).unwrap_or([0; 8]);
        for (row, bits) in rows.iter().enumerate() {
            for col in 0..GLYPH {
                if bits & (1 << col) != 0 {
                    fill(image, left + col * scale, y + row as u32 * scale, scale, colour);
                }
            }
        }
        left += GLYPH * scale;
    }
    left
}

/// Width of `text` at `scale`.
pub(crate) fn width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * GLYPH * scale
}

fn fill(image: &mut RgbImage, x: u32, y: u32, side: u32, colour: Rgb<u8>) {
    for py in y..(y + side).min(image.height()) {
        for px in x..(x + side).min(image.width()) {
            image.put_pixel(px, py, colour);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_inside_its_box_and_stops_at_the_right_edge() {
        let mut image = RgbImage::new(40, 10);
        let end = draw(&mut image, (0, 1), 1, "AB1234", Rgb([255, 255, 255]), 36);
        assert_eq!(end, 32, "four glyphs fit left of x = 36");
        let lit = |x0: u32, x1: u32| {
            (x0..x1)
                .flat_map(|x| (0..10).map(move |y| (x, y)))
                .filter(|(x, y)| image.get_pixel(*x, *y)[0] > 0)
                .count()
        };
        assert!(lit(0, 8) > 0 && lit(8, 16) > 0);
        assert_eq!(lit(32, 40), 0);
        assert_eq!(width("abc", 2), 48);
    }
}
