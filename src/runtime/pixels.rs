//! Camera pixel formats into RGB, into a reused buffer (pure code, tested without a camera).

use anyhow::{ensure, Result};
use image::RgbImage;

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
    fn short_buffers_and_odd_widths_are_errors() {
        let mut frame = RgbImage::new(0, 0);
        assert!(yuyv_to_rgb(&[0; 7], 4, 1, &mut frame).is_err());
        assert!(yuyv_to_rgb(&[0; 12], 3, 2, &mut frame).is_err());
    }
}
