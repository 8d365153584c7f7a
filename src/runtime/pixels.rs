//! Camera pixel formats into RGB, into a reused buffer (pure code, tested without a camera).

use std::io::Cursor;

use anyhow::{bail, ensure, Context, Result};
use image::codecs::jpeg::{JpegDecoder, JpegEncoder};
use image::{ColorType, ImageDecoder, RgbImage};

/// The largest frame decoded (an 8K camera's frame).
const MAX_JPEG_PIXELS: u64 = 7680 * 4320;

/// Quality of JPEG-compressed replay frames (a typical MJPEG camera setting).
const JPEG_QUALITY: u8 = 90;

/// A JPEG (colour or greyscale) → RGB into `frame`, resized only when the size changes.
pub(crate) fn decode_jpeg(jpeg: &[u8], frame: &mut RgbImage) -> Result<()> {
    // A frame cut short (a USB glitch) still decodes, grey below the cut: refuse it instead.
    let end = jpeg.iter().rposition(|b| *b != 0).map_or(0, |last| last + 1);
    ensure!(
        jpeg[..end].ends_with(&[0xFF, 0xD9]),
        "truncated JPEG: no end-of-image marker in {} bytes",
        jpeg.len()
    );
    let decoder = JpegDecoder::new(Cursor::new(jpeg)).context("not a valid JPEG")?;
    let (width, height) = decoder.dimensions();
    // A damaged header can claim any size: refuse one no camera delivers before allocating it.
    ensure!(
        width > 0 && height > 0 && width as u64 * height as u64 <= MAX_JPEG_PIXELS,
        "JPEG header claims {width}×{height} pixels (at most {MAX_JPEG_PIXELS} accepted)"
    );
    let colour = decoder.color_type();
    if frame.dimensions() != (width, height) {
        *frame = RgbImage::new(width, height);
    }
    let pixels = width as usize * height as usize;
    match colour {
        ColorType::Rgb8 => decoder.read_image(frame).context("the JPEG data is damaged")?,
        ColorType::L8 => {
            let bytes: &mut [u8] = frame;
            decoder
                .read_image(&mut bytes[..pixels])
                .context("the JPEG data is damaged")?;
            // Spread grey to RGB in place, from the end so that no value is overwritten unread.
            for i in (0..pixels).rev() {
                let grey = bytes[i];
                bytes[3 * i..3 * i + 3].fill(grey);
            }
        }
        other => bail!("JPEG colour type {other:?} is not supported (RGB or greyscale)"),
    }
    Ok(())
}

/// Copies `image` into `into`, reusing its buffer when the size matches.
pub(crate) fn copy_image(image: &RgbImage, into: &mut RgbImage) {
    if into.dimensions() == image.dimensions() {
        into.copy_from_slice(image);
    } else {
        *into = image.clone();
    }
}

/// An image as a JPEG, as an MJPEG camera would deliver it.
pub fn encode_jpeg(image: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY)
        .encode_image(image)
        .context("cannot encode a JPEG")?;
    Ok(bytes)
}

/// YUYV 4:2:2 (BT.601, limited range) → RGB. `frame` is resized only when the size changes.
pub fn yuyv_to_rgb(yuyv: &[u8], width: u32, height: u32, frame: &mut RgbImage) -> Result<()> {
    ensure!(width % 2 == 0, "YUYV needs an even width, got {width}");
    let needed = width as usize * height as usize * 2;
    ensure!(
        yuyv.len() >= needed,
        "YUYV buffer has {} bytes, a {width}×{height} frame needs {needed}",
        yuyv.len()
    );
    if frame.dimensions() != (width, height) {
        *frame = RgbImage::new(width, height);
    }
    for (pair, rgb) in yuyv[..needed].chunks_exact(4).zip(frame.chunks_exact_mut(6)) {
        let (y0, u, y1, v) = (pair[0], pair[1], pair[2], pair[3]);
        rgb[..3].copy_from_slice(&ycbcr_to_rgb(y0, u, v));
        rgb[3..].copy_from_slice(&ycbcr_to_rgb(y1, u, v));
    }
    Ok(())
}

fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let c = 1.164 * (y as f32 - 16.0);
    let (d, e) = (cb as f32 - 128.0, cr as f32 - 128.0);
    let clamp = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    [
        clamp(c + 1.596 * e),
        clamp(c - 0.392 * d - 0.813 * e),
        clamp(c + 2.017 * d),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_white_black_and_a_pure_red_convert() {
        let mut frame = RgbImage::new(0, 0);
        // Two pixel pairs: black/white with neutral chroma, then BT.601 red (Y 81, Cb 90, Cr 240).
        yuyv_to_rgb(&[16, 128, 235, 128, 81, 90, 81, 240], 4, 1, &mut frame).unwrap();
        assert_eq!(frame.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(frame.get_pixel(1, 0).0, [255, 255, 255]);
        let red = frame.get_pixel(2, 0).0;
        assert!(red[0] >= 250 && red[1] <= 5 && red[2] <= 5, "{red:?}");
    }

    #[test]
    fn jpeg_frames_decode_into_the_reused_buffer_and_damage_is_an_error() {
        let original = RgbImage::from_fn(40, 24, |x, y| image::Rgb([(x * 6) as u8, (y * 10) as u8, 128]));
        let jpeg = encode_jpeg(&original).unwrap();
        let mut frame = RgbImage::new(40, 24);
        let buffer = frame.as_ptr();
        decode_jpeg(&jpeg, &mut frame).unwrap();
        assert_eq!(frame.as_ptr(), buffer, "same size: the buffer is reused");
        let worst = original
            .iter()
            .zip(frame.iter())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 24, "JPEG error {worst}");
        let grey = image::DynamicImage::ImageRgb8(original).to_luma8();
        let mut grey_jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut grey_jpeg, 95)
            .encode_image(&grey)
            .unwrap();
        decode_jpeg(&grey_jpeg, &mut frame).unwrap();
        assert!(frame.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
        let cut = decode_jpeg(&jpeg[..jpeg.len() / 2], &mut frame).unwrap_err();
        assert!(cut.to_string().contains("truncated"), "{cut}");
        let mut padded = jpeg.clone();
        padded.extend([0; 16]);
        decode_jpeg(&padded, &mut frame).unwrap();
        assert!(decode_jpeg(b"not a jpeg", &mut frame).is_err());
    }

    #[test]
    fn short_buffers_and_odd_widths_are_errors() {
        let mut frame = RgbImage::new(0, 0);
        assert!(yuyv_to_rgb(&[0; 7], 4, 1, &mut frame).is_err());
        assert!(yuyv_to_rgb(&[0; 12], 3, 2, &mut frame).is_err());
    }
}
