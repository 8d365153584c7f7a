//! The size/accuracy curve of the knowledge bank: each task fitted with a range of coreset
//! fractions, kept dimensions and storage precisions, scored with its own task id (as the
//! PatchCore reference is), image AUROC against bytes per task.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Result;
use log::info;
use serde::Serialize;

use super::feature_cache::FeatureCache;
use super::html::{backbone_rows, LOW};
use super::metrics::TieGroups;
use super::report::BackboneInfo;
use crate::backbone::colour::image_colours;
use crate::backbone::Backbone;
use crate::bank::Precision;
use crate::data::dataset::load_task;
use crate::data::folder::load_rgb;
use crate::detect::{image_score, TaskIndex};
use crate::fit::{FitParams, Fitting, TaskFeatures};
use crate::render::html::{escape, page, score_cell};

/// One storage setting.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Setting {
    pub fraction: f32,
    /// 0: all feature dims.
    pub dims: usize,
    pub precision: Precision,
}

impl Setting {
    /// `all` or the dims kept.
    fn dims_label(&self) -> String {
        match self.dims {
            0 => "all".into(),
            dims => dims.to_string(),
        }
    }

    fn precision_label(&self) -> String {
        format!("{:?}", self.precision).to_lowercase()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub setting: Setting,
    /// Per task, in task order.
    pub image_auroc: Vec<Option<f64>>,
    pub bytes: Vec<usize>,
}

impl Point {
    pub(crate) fn mean_auroc(&self) -> Option<f64> {
        super::continual::mean(self.image_auroc.iter().flatten().copied())
    }

    pub fn max_bytes(&self) -> usize {
        self.bytes.iter().copied().max().unwrap_or(0)
    }
}

/// The settings measured: the full-precision 10 % coreset (the reference), then fewer rows,
/// fewer dims and narrower numbers.
pub(crate) fn settings() -> Vec<Setting> {
    let mut all = vec![Setting {
        fraction: 0.1,
        dims: 0,
        precision: Precision::F32,
    }];
    for precision in [Precision::F16, Precision::I8] {
        for dims in [0, 256, 128, 64] {
            for fraction in [0.1, 0.05, 0.025] {
                all.push(Setting {
                    fraction,
                    dims,
                    precision,
                });
            }
        }
    }
    all
}

pub fn run(
    backbone: &Backbone,
    root: &Path,
    tasks: &[String],
    cache: &FeatureCache,
    base: &FitParams,
) -> Result<Vec<Point>> {
    let settings = settings();
    let mut points: Vec<Point> = settings
        .iter()
        .map(|s| Point {
            setting: *s,
            image_auroc: Vec::new(),
            bytes: Vec::new(),
        })
        .collect();
    let dim = backbone.meta.feature_dim();
    let largest = settings.iter().map(|s| s.fraction).fold(0.0, f32::max);
    for name in tasks {
        let data = load_task(root, name)?;
        let train = cache.features(backbone, &data.train, &format!("{name}: train"))?;
        let test_paths: Vec<_> = data.test.iter().map(|t| t.image.clone()).collect();
        let test = cache.features(backbone, &test_paths, &format!("{name}: test"))?;
        let labels: Vec<bool> = data.test.iter().map(|t| t.is_anomalous()).collect();
        let unbounded = FitParams {
            task_budget_bytes: usize::MAX,
            ..base.clone()
        };
        let colours = image_colours(&backbone.meta, &data.train, |p| load_rgb(p))?;
        let fitting = Fitting::new(name, TaskFeatures::plain(&train, &colours), dim, &unbounded)?;
        let order = fitting.coreset((fitting.memory_rows() as f64 * largest as f64).ceil() as usize);
        // One PCA per kept-dims and precision, shared by the coreset fractions.
        let mut projections = HashMap::new();
        for point in &mut points {
            let s = point.setting;
            let params = FitParams {
                knowledge_fraction: s.fraction,
                knowledge_dims: s.dims,
                precision: s.precision,
                ..unbounded.clone()
            };
            let projection = projections
                .entry((s.dims, s.precision))
                .or_insert_with(|| fitting.projection(&params))
                .clone();
            let count = fitting.knowledge_count(&params, projection.as_ref())?;
            let task = fitting.task(&params, projection, &order[..count])?;
            let index = TaskIndex::new(&task)?;
            let scores = crate::parallel::map(&test, || (), |_, f| Ok(image_score(&index.patch_scores(f)?)))?;
            point.image_auroc.push(TieGroups::new(&scores, &labels).auroc());
            point.bytes.push(task.bytes());
            info!("{name}: {s:?}: {count} rows, {} bytes", task.bytes());
        }
    }
    Ok(points)
}

/// The table `ucad bench-bank` prints; Δ is against the first point (the reference).
pub fn table(tasks: &[String], points: &[Point], budget: usize) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:>6} {:>5} {:>5} ", "frac", "dims", "prec");
    for t in tasks {
        let _ = write!(out, "{:>14} ", truncate(t, 14));
    }
    let _ = writeln!(out, "{:>7} {:>7} {:>11} {:>11}", "mean", "Δ", "max bytes", "fits");
    let reference = points.first().and_then(Point::mean_auroc).unwrap_or(f64::NAN);
    for p in points {
        let s = p.setting;
        let _ = write!(
            out,
            "{:>5.1}% {:>5} {:>5} ",
            s.fraction * 100.0,
            s.dims_label(),
            s.precision_label()
        );
        for auroc in &p.image_auroc {
            let _ = write!(out, "{:>14} ", auroc.map_or("—".into(), |a| format!("{a:.4}")));
        }
        let mean = p.mean_auroc().unwrap_or(f64::NAN);
        let fits = if p.max_bytes() <= budget { "yes" } else { "no" };
        let _ = writeln!(
            out,
            "{mean:>7.4} {:>+7.4} {:>11} {fits:>11}",
            mean - reference,
            p.max_bytes()
        );
    }
    out
}

fn truncate(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// The benchmark as one self-contained page: a row per setting, each AUROC on a colour scale;
/// each AUROC carries its JSON key (`N.image_auroc.J`).
pub fn html(tasks: &[String], points: &[Point], budget: usize, backbone: &BackboneInfo) -> String {
    let mut body = String::from("<h1>ucad bench-bank</h1>\n<table>");
    backbone_rows(&mut body, backbone);
    let _ = write!(
        body,
        "<tr><th>budget</th><td style=\"text-align:left\">{budget} bytes per task</td></tr></table>\n\
         <p class=\"note\">Image AUROC with the task id given, per storage setting; the first row is the \
         reference (f32, all dims, 10% coreset). Largest task in bytes.</p>\n\
         <table><tr><th>coreset</th><th>dims</th><th>precision</th>"
    );
    for t in tasks {
        let _ = write!(body, "<th>{}</th>", escape(t));
    }
    body.push_str("<th>mean</th><th>largest task (bytes)</th><th>fits</th></tr>\n");
    for (i, p) in points.iter().enumerate() {
        let s = p.setting;
        let _ = write!(
            body,
            "<tr><td>{:.1}%</td><td>{}</td><td>{}</td>",
            s.fraction * 100.0,
            s.dims_label(),
            s.precision_label()
        );
        for (j, auroc) in p.image_auroc.iter().enumerate() {
            body.push_str(&score_cell(&format!("{i}.image_auroc.{j}"), *auroc, LOW));
        }
        let fits = if p.max_bytes() <= budget { "yes" } else { "no" };
        let mean = p.mean_auroc().map_or("—".into(), |m| format!("{m:.3}"));
        let _ = writeln!(body, "<td>{mean}</td><td>{}</td><td>{fits}</td></tr>", p.max_bytes());
    }
    body.push_str("</table>\n");
    page("ucad bench-bank", &body)
}
