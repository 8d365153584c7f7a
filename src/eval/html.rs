//! `ucad eval --html report.html`: the evaluation as one self-contained page (inline SVG and
//! JPEG data URIs, no script, no network). Every number shown carries `data-key`, the JSON
//! report's path to the same value, so that what the page says can be checked against it.

use std::fmt::Write;

use super::continual::Matrix;
use super::gallery::Gallery;
use super::report::{BackboneInfo, ImageDecision, Report, TaskMetrics};
use crate::render::chart::{curves, histogram, Marker, Series};
use crate::render::html::{cell, escape, page, score_cell};

/// AUROC-like values at or below this are drawn fully red (0.5 is chance; 0.7 is already poor).
pub(crate) const LOW: f64 = 0.7;
const UCAD: &str = "#3b82c4";
const REFERENCE: &str = "#8a96a3";

/// A metric as the page shows it: 3 decimals, `—` when undefined.
fn metric(value: Option<f64>) -> String {
    value.map_or("—".into(), |v| format!("{v:.3}"))
}

pub fn eval_page(report: &Report) -> String {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<h1>ucad eval: {} tasks</h1>\n<p>Learned in this order, one after another, without the task id at \
         test time: {}.</p>",
        report.tasks.len(),
        escape(&report.tasks.join(" → "))
    );
    final_row(&mut body, report);
    settings(&mut body, report);
    per_task_table(&mut body, report);
    let _ = writeln!(
        body,
        "<h2>Accuracy matrices</h2><p class=\"note\">Row: after learning that task; column: the task's \
         test set. The last row is the final one.</p><div class=\"charts\">"
    );
    let m = &report.matrix;
    for (key, title, matrix) in [
        ("image_auroc", "image AUROC", &m.image_auroc),
        ("pixel_auroc", "pixel AUROC", &m.pixel_auroc),
        ("aupro", "AUPRO", &m.aupro),
        ("routing", "routing accuracy", &m.routing),
    ] {
        matrix_table(&mut body, &report.tasks, key, title, matrix);
    }
    body.push_str("</div>\n");
    for (i, task) in report.per_task.iter().enumerate() {
        task_section(&mut body, report, i, task);
    }
    page(&format!("ucad eval: {}", report.tasks.join(", ")), &body)
}

fn final_row(body: &mut String, r: &Report) {
    let items = [
        ("final.image_auroc", "image AUROC", metric(r.final_.image_auroc)),
        ("final.pixel_auroc", "pixel AUROC", metric(r.final_.pixel_auroc)),
        ("final.aupro", "AUPRO", metric(r.final_.aupro)),
        (
            "routing_accuracy",
            "routing accuracy",
            format!("{:.3}", r.routing_accuracy),
        ),
        (
            "forgetting.image_auroc",
            "forgetting (image)",
            metric(r.forgetting.image_auroc),
        ),
        (
            "bank.bytes_per_task",
            "bytes per task",
            r.bank.bytes_per_task.to_string(),
        ),
        (
            "timing.ms_per_image",
            "ms per image",
            format!("{:.1}", r.timing.ms_per_image),
        ),
    ];
    body.push_str("<h2>Final</h2><div class=\"final\">");
    for (key, label, value) in items {
        let _ = write!(
            body,
            "<div><div class=\"note\">{label}</div><div class=\"big\" data-key=\"{key}\">{value}</div></div>"
        );
    }
    let span = |key: &str, v: Option<f64>| format!("<span data-key=\"{key}\">{}</span>", metric(v));
    let _ = writeln!(
        body,
        "</div><p class=\"note\">Oracle (task id given): image AUROC {}, AUPRO {}. Upper reference \
         (PatchCore, {}% of all training patches per task, task id given): image AUROC {}, AUPRO {}.</p>",
        span("oracle.image_auroc", r.oracle.summary.image_auroc),
        span("oracle.aupro", r.oracle.summary.aupro),
        r.reference.coreset_fraction * 100.0,
        span("reference.image_auroc", r.reference.summary.image_auroc),
        span("reference.aupro", r.reference.summary.aupro)
    );
}

fn settings(body: &mut String, r: &Report) {
    let (b, s) = (&r.backbone, &r.settings);
    let rows = [
        ("key rows", s.key_rows.to_string()),
        (
            "knowledge",
            format!(
                "{}% coreset in ≤ {} dims, {}, ≤ {} bytes per task",
                s.knowledge_fraction * 100.0,
                s.knowledge_dims,
                s.precision,
                s.task_budget_bytes
            ),
        ),
        ("k", s.k.to_string()),
        (
            "threshold",
            format!(
                "{}% of training images held out, target false-reject rate {}",
                s.holdout * 100.0,
                s.target_false_reject
            ),
        ),
        ("seed", s.seed.to_string()),
        (
            "timing",
            format!(
                "{:.1} ms per image ({:.1} backbone on {} threads + {:.2} routing and scoring); fit {:.1} s per task{}",
                r.timing.ms_per_image,
                r.timing.backbone_ms_per_image,
                r.timing.threads,
                r.timing.route_score_ms_per_image,
                r.timing.fit_s_per_task,
                if r.timing.feature_cache {
                    " (features read from the cache)"
                } else {
                    ""
                }
            ),
        ),
    ];
    body.push_str("<h2>Settings</h2><table>");
    backbone_rows(body, b);
    for (name, value) in rows {
        let _ = write!(
            body,
            "<tr><th>{name}</th><td style=\"text-align:left\">{}</td></tr>",
            escape(&value)
        );
    }
    body.push_str("</table>\n");
}

fn per_task_table(body: &mut String, r: &Report) {
    body.push_str(
        "<h2>Per task, after the last</h2><table><tr><th>task</th><th>test images</th><th>image AUROC</th>\
         <th>pixel AUROC</th><th>AUPRO</th><th>routing</th><th>unknown</th><th>threshold</th>\
         <th>false rejects</th><th>escapes</th><th>escapes expected</th></tr>\n",
    );
    for (i, t) in r.per_task.iter().enumerate() {
        let key = |name: &str| format!("per_task.{i}.{name}");
        let _ = writeln!(
            body,
            "<tr><td><a href=\"#task-{i}\">{}</a></td>{}{}{}{}{}{}{}{}{}{}</tr>",
            escape(&t.task),
            cell(&key("test_images"), &t.test_images.to_string()),
            score_cell(&key("image_auroc"), t.image_auroc, LOW),
            score_cell(&key("pixel_auroc"), t.pixel_auroc, LOW),
            score_cell(&key("aupro"), t.aupro, LOW),
            score_cell(&key("routing_accuracy"), t.routing_accuracy, LOW),
            cell(&key("unknown_rate"), &metric(t.unknown_rate)),
            cell(
                &key("threshold"),
                &t.threshold.map_or("—".into(), |v| format!("{v:.4}"))
            ),
            cell(&key("false_reject_rate"), &metric(t.false_reject_rate)),
            cell(&key("escape_rate"), &metric(t.escape_rate)),
            cell(&key("expected_escape_rate"), &metric(t.expected_escape_rate)),
        );
    }
    body.push_str("</table>\n");
}

fn matrix_table(body: &mut String, tasks: &[String], key: &str, title: &str, matrix: &Matrix) {
    let _ = write!(body, "<table><caption>{title}</caption><tr><th>after</th>");
    for (j, task) in tasks.iter().enumerate() {
        let _ = write!(body, "<th title=\"{}\">{}</th>", escape(task), j + 1);
    }
    body.push_str("</tr>");
    for (t, row) in matrix.iter().enumerate() {
        let _ = write!(
            body,
            "<tr><th title=\"{}\">{}. {}</th>",
            escape(&tasks[t]),
            t + 1,
            escape(&tasks[t])
        );
        for (j, value) in row.iter().enumerate() {
            body.push_str(&score_cell(&format!("matrix.{key}.{t}.{j}"), *value, LOW));
        }
        body.push_str("</tr>");
    }
    body.push_str("</table>\n");
}

fn task_section(body: &mut String, r: &Report, i: usize, t: &TaskMetrics) {
    let reference = &r.reference.per_task[i];
    let _ = writeln!(
        body,
        "<section id=\"task-{i}\"><h2>{}</h2><div class=\"charts\">",
        escape(&t.task)
    );
    let lines = |pick: fn(&TaskMetrics) -> &[[f64; 2]]| {
        vec![
            (UCAD, "ucad, routed".to_string(), pick(t)),
            (
                REFERENCE,
                format!("reference ({}%)", r.reference.coreset_fraction * 100.0),
                pick(reference),
            ),
        ]
    };
    body.push_str(&curves(
        &lines(|m| &m.curves.roc),
        (1.0, 4),
        "false-positive rate (images)",
        "true-positive rate",
    ));
    body.push_str(&curves(
        &lines(|m| &m.curves.pro),
        (r.settings.aupro_max_fpr, 3),
        "false-positive rate (pixels)",
        "per-region overlap",
    ));
    let own: Vec<&ImageDecision> = r.decisions.iter().filter(|d| d.task == t.task).collect();
    let scores = |defective: bool| -> Vec<f32> {
        (own.iter())
            .filter(|d| d.defective() == defective)
            .map(|d| d.score_minus_threshold)
            .collect()
    };
    let (normal, defective) = (scores(false), scores(true));
    let rate = |v: Option<f64>| v.map_or("—".into(), |v| format!("{:.1} %", v * 100.0));
    let marker = Marker {
        id: "threshold",
        at: 0.0,
        label: format!(
            "threshold: false rejects {}, escapes {} (expected {})",
            rate(t.false_reject_rate),
            rate(t.escape_rate),
            rate(t.expected_escape_rate)
        ),
        colour: "#d62f2f",
    };
    let series = [
        Series {
            class: "normal",
            label: "normal test images".into(),
            colour: UCAD,
            values: &normal,
        },
        Series {
            class: "defect",
            label: "defective test images".into(),
            colour: "#e8892b",
            values: &defective,
        },
    ];
    body.push_str(&histogram(
        &series,
        &[marker],
        "image score − threshold of the task it was judged as",
    ));
    body.push_str("</div>\n");
    for gallery in Gallery::ALL {
        let cases = gallery.cases(&r.decisions, &t.task);
        let _ = writeln!(
            body,
            "<h3 id=\"task-{i}-{}\">{} — {}</h3>",
            gallery.id(),
            gallery.title(),
            if cases.is_empty() {
                "none".to_string()
            } else {
                format!("{} shown", cases.len())
            }
        );
        if cases.is_empty() {
            continue;
        }
        body.push_str("<div class=\"gallery\">");
        for index in cases {
            figure(body, &r.decisions[index], r.pictures.get(&index));
        }
        body.push_str("</div>\n");
    }
    body.push_str("</section>\n");
}

fn figure(body: &mut String, d: &ImageDecision, picture: Option<&String>) {
    let name = std::path::Path::new(&d.image)
        .file_name()
        .map_or(d.image.clone(), |n| n.to_string_lossy().into_owned());
    let image = picture.map_or(String::new(), |uri| {
        format!("<img alt=\"{}\" src=\"{uri}\">", escape(&name))
    });
    let _ = write!(
        body,
        "<figure>{image}<figcaption>{} ({}): judged as {}{}, {}</figcaption></figure>",
        escape(&name),
        escape(&d.defect),
        escape(&d.judged_as),
        if d.unknown { " (unknown product)" } else { "" },
        if d.rejected { "rejected" } else { "passed" }
    );
}

/// The backbone's rows of a settings table.
pub(crate) fn backbone_rows(body: &mut String, b: &BackboneInfo) {
    for (name, value) in [
        ("backbone", b.describe()),
        ("backbone file", format!("{} (sha256 {})", b.file, b.sha256)),
    ] {
        let _ = write!(
            body,
            "<tr><th>{name}</th><td style=\"text-align:left\">{}</td></tr>",
            escape(&value)
        );
    }
}
