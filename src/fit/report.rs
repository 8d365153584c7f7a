//! `ucad fit --report fit.html`: one self-contained page (inline SVG, no script) with the
//! held-out normal scores and the drawn defects' scores as histograms, the threshold between
//! them, and the expected false-reject and escape rates.

use super::expected::Expected;
use crate::render::chart::{histogram, Marker, Series};
use crate::render::html::{escape, page};

/// The page for task `name`.
pub fn fit_report(name: &str, expected: &Expected) -> String {
    let series = [
        Series {
            class: "normal",
            label: "held-out normal".into(),
            colour: "#3b82c4",
            values: &expected.normal_scores,
        },
        Series {
            class: "defect",
            label: "drawn defects".into(),
            colour: "#e8892b",
            values: &expected.defect_scores,
        },
    ];
    let threshold = Marker {
        id: "threshold",
        at: expected.threshold,
        label: format!("threshold {:.4}", expected.threshold),
        colour: "#d62f2f",
    };
    let body = format!(
        "<h1>{}</h1>\n<p id=\"placement\">{}</p>\n<p id=\"expected\">{}</p>\n{}\n\
         <p class=\"note\">Image scores (the largest patch score of an image). Blue: the held-out normal \
         images the threshold was calibrated on. Orange: the same images with a scratch, a stain or a moved \
         patch drawn on (what the escape estimate counts). Red: the threshold; a score above it is \
         rejected.</p>",
        escape(name),
        escape(&expected.placement()),
        escape(&expected.to_string()),
        histogram(&series, &[threshold], "image score"),
    );
    page(&format!("ucad fit: {name}"), &body)
}
