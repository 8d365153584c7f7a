//! `ucad fit --report fit.html`: one self-contained page (inline SVG, no script) with the
//! held-out normal scores and the drawn defects' scores as histograms, the threshold between
//! them, and the expected false-reject and escape rates. Hand-written SVG: two histograms and a
//! line are smaller than a plotting crate and its fonts.

use std::fmt::Write;

use super::expected::Expected;

const WIDTH: f32 = 760.0;
const HEIGHT: f32 = 320.0;
const MARGIN: (f32, f32, f32, f32) = (48.0, 20.0, 24.0, 44.0); // left, right, top, bottom
const BINS: usize = 32;

/// The page for task `name`.
pub fn fit_report(name: &str, expected: &Expected) -> String {
    let name = escape(name);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ucad fit: {name}</title>\n\
         <style>body{{font:15px/1.45 system-ui,sans-serif;margin:24px;color:#1d232a}}\
         .note{{color:#58636f}}svg text{{font:12px system-ui,sans-serif}}</style></head><body>\n\
         <h1>{name}</h1>\n<p id=\"placement\">{}</p>\n<p id=\"expected\">{}</p>\n{}\n\
         <p class=\"note\">Image scores (the largest patch score of an image). Blue: the held-out normal \
         images the threshold was calibrated on. Orange: the same images with a scratch, a stain or a moved \
         patch drawn on (what the escape estimate counts). Red: the threshold; a score above it is \
         rejected.</p>\n</body></html>\n",
        escape(&expected.placement()),
        escape(&expected.to_string()),
        histogram(expected),
    )
}

/// The two histograms on one axis, with the threshold.
fn histogram(expected: &Expected) -> String {
    let all = expected
        .normal_scores
        .iter()
        .chain(&expected.defect_scores)
        .chain([&expected.threshold]);
    let (low, high) = all.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), s| (l.min(*s), h.max(*s)));
    let span = (high - low).max(1e-6) * 1.05;
    let low = low - span * 0.025;
    let bin = span / BINS as f32;
    let counts = |scores: &[f32]| {
        let mut counts = [0usize; BINS];
        for s in scores {
            counts[(((s - low) / bin) as usize).min(BINS - 1)] += 1;
        }
        counts
    };
    let (normal, defects) = (counts(&expected.normal_scores), counts(&expected.defect_scores));
    let tallest = normal.iter().chain(&defects).copied().max().unwrap_or(1).max(1) as f32;
    let (left, right, top, bottom) = MARGIN;
    let plot_w = WIDTH - left - right;
    let plot_h = HEIGHT - top - bottom;
    let x = |score: f32| left + (score - low) / span * plot_w;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">\n"
    );
    for (series, colour, class) in [(&normal, "#3b82c4", "normal"), (&defects, "#e8892b", "defect")] {
        for (i, count) in series.iter().enumerate().filter(|(_, c)| **c > 0) {
            let h = *count as f32 / tallest * plot_h;
            let _ = writeln!(
                svg,
                "<rect class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{colour}\" \
                 fill-opacity=\"0.6\"><title>{count}</title></rect>",
                x(low + i as f32 * bin),
                top + plot_h - h,
                plot_w / BINS as f32 - 1.0,
            );
        }
    }
    let base = top + plot_h;
    let _ = writeln!(
        svg,
        "<line x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"#1d232a\"/>",
        left + plot_w
    );
    for tick in 0..=4 {
        let score = low + span * tick as f32 / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{score:.3}</text>",
            x(score),
            base + 16.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">image score</text>",
        left + plot_w / 2.0,
        base + 34.0
    );
    let t = x(expected.threshold);
    let _ = writeln!(
        svg,
        "<line id=\"threshold\" x1=\"{t:.1}\" y1=\"{top}\" x2=\"{t:.1}\" y2=\"{base}\" stroke=\"#d62f2f\" \
         stroke-width=\"2\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d62f2f\">threshold {:.4}</text>",
        t + 4.0,
        top + 12.0,
        expected.threshold
    );
    let legend = [
        ("#3b82c4", format!("held-out normal ({})", expected.normal_scores.len())),
        ("#e8892b", format!("drawn defects ({})", expected.defect_scores.len())),
    ];
    for (i, (colour, label)) in legend.iter().enumerate() {
        let y = top + 30.0 + 18.0 * i as f32;
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{colour}\" fill-opacity=\"0.6\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
            left + plot_w - 190.0,
            y - 10.0,
            left + plot_w - 172.0,
            y
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Text for HTML: the five characters that could start markup escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
