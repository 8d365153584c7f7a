//! The pieces every HTML report shares: escaping, one page skeleton with its style, images
//! inlined as data URIs and cells coloured by their value. Reports are single files: no script,
//! no network, nothing to fetch.

use anyhow::{Context, Result};
use base64::Engine;
use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;

/// Text for HTML: the five characters that could start markup escaped.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A whole page: `title` (plain text) and `body` (markup).
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{STYLE}</style></head>\
         <body>\n{body}\n</body></html>\n",
        escape(title)
    )
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:24px;color:#1d232a;max-width:1400px}\
h2{margin-top:2em;border-bottom:1px solid #d5dae0}.note{color:#58636f}svg text{font:12px system-ui,sans-serif}\
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:8px 0}\
th,td{padding:4px 8px;border:1px solid #e3e7eb;text-align:right}th:first-child,td:first-child{text-align:left}\
th{font-weight:500;color:#58636f;background:#f6f8fa}.charts{display:flex;flex-wrap:wrap;gap:16px}\
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px}\
figure{margin:0;border:1px solid #e3e7eb;padding:6px}figure img{width:100%;display:block}\
figcaption{font-size:13px;color:#58636f;word-break:break-all}.big{font-size:22px;font-weight:600}\
.final{display:flex;flex-wrap:wrap;gap:24px}.final div{min-width:120px}";

/// A JPEG of `image` (quality 85: a tenth of a PNG's size for a photograph) as a `data:` URI
/// for an `<img src>`.
pub fn jpeg_uri(image: &RgbImage) -> Result<String> {
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode_image(image)
        .context("cannot encode a picture as JPEG")?;
    Ok(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jpeg)
    ))
}

/// A table cell showing `value` (3 decimals, `—` when undefined) on a background from red (at
/// `low` or below) to green (at 1), tagged `data-key` so that a reader can find it.
pub fn score_cell(key: &str, value: Option<f64>, low: f64) -> String {
    match value {
        None => format!("<td data-key=\"{}\">—</td>", escape(key)),
        Some(v) => {
            let t = ((v - low) / (1.0 - low)).clamp(0.0, 1.0);
            let c = colorous::RED_YELLOW_GREEN.eval_continuous(t);
            // Halfway to white, so that dark text stays readable on every colour.
            let [r, g, b] = [c.r, c.g, c.b].map(|v| (v as u16 + 255) / 2);
            format!(
                "<td data-key=\"{}\" style=\"background:rgb({r},{g},{b})\">{v:.3}</td>",
                escape(key)
            )
        }
    }
}

/// A plain cell tagged `data-key`.
pub fn cell(key: &str, text: &str) -> String {
    format!("<td data-key=\"{}\">{}</td>", escape(key), escape(text))
}
