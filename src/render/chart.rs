//! Charts as inline SVG, hand-written: histograms with marked values and curves in a unit box
//! are a few dozen lines each, smaller than a plotting crate with its font handling, and the
//! output stays plain text that a test can read.

use std::fmt::Write;

use super::html::escape;

const WIDTH: f32 = 600.0;
const HEIGHT: f32 = 300.0;
const MARGIN: (f32, f32, f32, f32) = (48.0, 20.0, 24.0, 44.0); // left, right, top, bottom
const BINS: usize = 32;
/// About the width of a character of the 12-pixel labels.
const CHAR_WIDTH: f32 = 6.5;

/// Values drawn as one histogram (bars of `class`, with their count as a tooltip).
pub struct Series<'a> {
    pub class: &'static str,
    pub label: String,
    pub colour: &'static str,
    pub values: &'a [f32],
}

/// A vertical line at a value (element id `id`).
pub struct Marker {
    pub id: &'static str,
    pub at: f32,
    pub label: String,
    pub colour: &'static str,
}

/// Histograms of `series` on one axis with `markers`.
pub fn histogram(series: &[Series], markers: &[Marker], axis: &str) -> String {
    let all = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .chain(markers.iter().map(|m| m.at));
    let (low, high) = all
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    let (low, high) = if low.is_finite() { (low, high) } else { (0.0, 1.0) };
    let span = (high - low).max(1e-6) * 1.05;
    let low = low - span * 0.025;
    let bin = span / BINS as f32;
    let counts: Vec<[usize; BINS]> = series
        .iter()
        .map(|s| {
            let mut counts = [0usize; BINS];
            for v in s.values.iter().filter(|v| v.is_finite()) {
                counts[(((v - low) / bin) as usize).min(BINS - 1)] += 1;
            }
            counts
        })
        .collect();
    let tallest = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f32;
    let frame = Frame::new();
    let x = |v: f32| frame.left + (v - low) / span * frame.width;
    let mut svg = frame.open();
    for (s, counts) in series.iter().zip(&counts) {
        for (i, count) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            let h = *count as f32 / tallest * frame.height;
            let _ = writeln!(
                svg,
                "<rect class=\"{}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\" \
                 fill-opacity=\"0.6\"><title>{count}</title></rect>",
                s.class,
                x(low + i as f32 * bin),
                frame.base() - h,
                frame.width / BINS as f32 - 1.0,
                s.colour
            );
        }
    }
    frame.x_axis(
        &mut svg,
        (0..=4).map(|t| {
            (
                x(low + span * t as f32 / 4.0),
                format!("{:.3}", low + span * t as f32 / 4.0),
            )
        }),
        axis,
    );
    for (i, m) in markers.iter().enumerate() {
        let at = x(m.at);
        // A label that would run past the right edge is set to the left of its line.
        let fits_right = at + 4.0 + m.label.chars().count() as f32 * CHAR_WIDTH < WIDTH;
        let (label_x, anchor) = if fits_right {
            (at + 4.0, "start")
        } else {
            (at - 4.0, "end")
        };
        let _ = writeln!(
            svg,
            "<line id=\"{}\" x1=\"{at:.1}\" y1=\"{}\" x2=\"{at:.1}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"2\"/>\
             <text x=\"{label_x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"{}\">{}</text>",
            m.id,
            frame.top,
            frame.base(),
            m.colour,
            frame.top + 12.0 + 14.0 * i as f32,
            m.colour,
            escape(&m.label)
        );
    }
    let legend: Vec<(&str, String)> = series
        .iter()
        .map(|s| (s.colour, format!("{} ({})", s.label, s.values.len())))
        .collect();
    frame.legend(&mut svg, &legend);
    svg.push_str("</svg>");
    svg
}

/// Curves of (x, y) points in [0, `x_max`] × [0, 1], e.g. ROC or PRO, with `x_ticks` intervals
/// on the x axis.
pub fn curves(
    lines: &[(&'static str, String, &[[f64; 2]])],
    (x_max, x_ticks): (f64, usize),
    x_axis: &str,
    y_axis: &str,
) -> String {
    let frame = Frame::new();
    let x = |v: f64| frame.left + (v / x_max) as f32 * frame.width;
    let y = |v: f64| frame.base() - v as f32 * frame.height;
    let mut svg = frame.open();
    for t in 0..=4 {
        let level = y(t as f64 / 4.0);
        let _ = writeln!(
            svg,
            "<line x1=\"{}\" y1=\"{level:.1}\" x2=\"{}\" y2=\"{level:.1}\" stroke=\"#e3e7eb\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.2}</text>",
            frame.left,
            frame.left + frame.width,
            frame.left - 6.0,
            level + 4.0,
            t as f64 / 4.0
        );
    }
    for (colour, _, points) in lines {
        let path: Vec<String> = points
            .iter()
            .map(|[px, py]| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
    }
    let ticks = (0..=x_ticks).map(|t| {
        let at = x_max * t as f64 / x_ticks as f64;
        (x(at), format!("{at:.2}"))
    });
    frame.x_axis(&mut svg, ticks, x_axis);
    let _ = writeln!(
        svg,
        "<text transform=\"translate(12,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        frame.top + frame.height / 2.0,
        escape(y_axis)
    );
    let legend: Vec<(&str, String)> = lines.iter().map(|(c, l, _)| (*c, l.clone())).collect();
    frame.legend(&mut svg, &legend);
    svg.push_str("</svg>");
    svg
}

/// The plot area inside the margins.
struct Frame {
    left: f32,
    top: f32,
    width: f32,
    height: f32,
}

impl Frame {
    fn new() -> Frame {
        let (left, right, top, bottom) = MARGIN;
        Frame {
            left,
            top,
            width: WIDTH - left - right,
            height: HEIGHT - top - bottom,
        }
    }

    fn base(&self) -> f32 {
        self.top + self.height
    }

    fn open(&self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">\n"
        )
    }

    fn x_axis(&self, svg: &mut String, ticks: impl Iterator<Item = (f32, String)>, label: &str) {
        let base = self.base();
        let _ = writeln!(
            svg,
            "<line x1=\"{}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"#1d232a\"/>",
            self.left,
            self.left + self.width
        );
        for (at, text) in ticks {
            let _ = writeln!(
                svg,
                "<text x=\"{at:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{text}</text>",
                base + 16.0
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            self.left + self.width / 2.0,
            base + 34.0,
            escape(label)
        );
    }

    fn legend(&self, svg: &mut String, entries: &[(&str, String)]) {
        let right = self.left + self.width;
        for (i, (colour, label)) in entries.iter().enumerate() {
            let y = self.top + 30.0 + 18.0 * i as f32;
            let _ = writeln!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{colour}\" fill-opacity=\"0.6\"/>\
                 <text x=\"{:.1}\" y=\"{y:.1}\">{}</text>",
                right - 230.0,
                y - 10.0,
                right - 212.0,
                escape(label)
            );
        }
    }
}
