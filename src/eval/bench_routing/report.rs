//! What `ucad bench-routing` reports, and its table.

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::eval::html::backbone_rows;
use crate::eval::report::BackboneInfo;
use crate::render::html::{cell, escape, page, score_cell};

#[derive(Debug, Clone, Serialize)]
pub struct SequenceStage {
    /// The task just learned.
    pub learned: String,
    pub tasks: usize,
    pub test_images: usize,
    /// Share of test images judged as their own task (an unknown verdict still names the
    /// candidate it came from; unknown verdicts are counted in `unknown_rate`).
    pub accuracy: f64,
    pub worst_task: String,
    pub worst_accuracy: f64,
    /// Share of test images of learned tasks taken for an unknown product.
    pub unknown_rate: f64,
    /// 5th percentile of the routing margin (normalised units).
    pub margin_p5: f64,
    /// Test images judged as another task than their own, most first.
    pub misjudged: Vec<Misjudged>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Misjudged {
    pub task: String,
    pub judged_as: String,
    pub images: usize,
    /// How many of them were also called unknown.
    pub unknown: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeftOut {
    pub task: String,
    /// Share of its test images the bank of all tasks calls unknown.
    pub unknown_when_known: f64,
    /// Share of its test images called unknown by a bank of all the other tasks.
    pub detected: f64,
    /// Share of the other tasks' test images called unknown by that bank.
    pub false_unknown: f64,
}

/// One learning order and the stages it went through.
#[derive(Debug, Clone, Serialize)]
pub struct Order {
    /// The seed of the shuffle; `None`: the spread order.
    pub seed: Option<u64>,
    pub tasks: Vec<String>,
    pub stages: Vec<SequenceStage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoutingBenchReport {
    /// Whether the real sets were tested on held-out training images (see [`super::RoutingBenchOptions`]).
    pub validation: bool,
    pub orders: Vec<Order>,
    /// The lowest accuracy after the last task over the orders.
    pub worst_final_accuracy: f64,
    /// The lowest accuracy of one task at any stage of any order.
    pub worst_task_accuracy: f64,
    pub left_out: Vec<LeftOut>,
    /// Pooled over all left-out tasks' test images.
    pub unknown_detected: f64,
    /// Pooled over every leave-one-out bank and its known tasks' test images.
    pub false_unknown: f64,
}

/// The table `ucad bench-routing` prints.
impl fmt::Display for RoutingBenchReport {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        let report = self;
        for order in &report.orders {
            let seed = order.seed.map_or("spread".to_string(), |s| format!("seed {s}"));
            writeln!(out, "order ({seed}): {}", order.tasks.join(", "))?;
            writeln!(
                out,
                "{:>5} {:<16} {:>7} {:>9} {:>9} {:<16} {:>8} {:>9}",
                "tasks", "learned", "images", "accuracy", "worst", "worst task", "unknown", "margin p5"
            )?;
            for s in &order.stages {
                writeln!(
                    out,
                    "{:>5} {:<16} {:>7} {:>9.4} {:>9.4} {:<16} {:>8.4} {:>9.3}",
                    s.tasks,
                    s.learned,
                    s.test_images,
                    s.accuracy,
                    s.worst_accuracy,
                    s.worst_task,
                    s.unknown_rate,
                    s.margin_p5
                )?;
            }
        }
        if let Some(last) = report.orders.first().and_then(|o| o.stages.last()) {
            writeln!(out, "after the last task, images judged as another task:")?;
            for m in &last.misjudged {
                writeln!(
                    out,
                    "  {:<16} -> {:<16} {:>3} ({} of them unknown)",
                    m.task, m.judged_as, m.images, m.unknown
                )?;
            }
        }
        writeln!(
            out,
            "each task left out: its test images called unknown / the others' called unknown; \
         with it known: its test images called unknown"
        )?;
        for l in &report.left_out {
            writeln!(
                out,
                "  {:<16} {:>7.4} {:>7.4} {:>7.4}",
                l.task, l.detected, l.false_unknown, l.unknown_when_known
            )?;
        }
        let tested = match report.validation {
            true => "validation: real sets tested on held-out training images",
            false => "real sets tested on their test splits",
        };
        writeln!(
            out,
            "{tested}; worst of {} orders: accuracy after the last task {:.4}, lowest task at any stage {:.4}",
            report.orders.len(),
            report.worst_final_accuracy,
            report.worst_task_accuracy
        )?;
        writeln!(
            out,
            "unknown product detection {:.4}; known parts called unknown {:.4}",
            report.unknown_detected, report.false_unknown
        )?;
        Ok(())
    }
}

/// Routing accuracies at or below this are drawn fully red.
const LOW: f64 = 0.9;

impl RoutingBenchReport {
    /// The benchmark as one self-contained page; every number carries its JSON key.
    pub fn html(&self, backbone: &BackboneInfo) -> String {
        let mut body = String::from("<h1>ucad bench-routing</h1>\n<div class=\"final\">");
        let headline = [
            (
                "worst_final_accuracy",
                "worst final accuracy",
                self.worst_final_accuracy,
            ),
            (
                "worst_task_accuracy",
                "worst task at any stage",
                self.worst_task_accuracy,
            ),
            (
                "unknown_detected",
                "left-out products called unknown",
                self.unknown_detected,
            ),
            ("false_unknown", "known products called unknown", self.false_unknown),
        ];
        for (key, label, value) in headline {
            let _ = write!(
                body,
                "<div><div class=\"note\">{label}</div><div class=\"big\" data-key=\"{key}\">{value:.4}</div></div>"
            );
        }
        body.push_str("</div>\n<h2>Settings</h2><table>");
        backbone_rows(&mut body, backbone);
        let test_on = if self.validation {
            "held-out training images (validation)"
        } else {
            "test splits"
        };
        let _ = writeln!(
            body,
            "<tr><th>tested on</th><td style=\"text-align:left\">{test_on}</td></tr></table>"
        );
        for (o, order) in self.orders.iter().enumerate() {
            order_table(&mut body, o, order);
        }
        body.push_str(
            "<h2>Each product left out</h2><table><tr><th>task</th><th>its images called unknown</th>\
             <th>the others' called unknown</th><th>its images called unknown when known</th></tr>",
        );
        for (i, l) in self.left_out.iter().enumerate() {
            let key = |name: &str| format!("left_out.{i}.{name}");
            let _ = write!(
                body,
                "<tr><td>{}</td>{}{}{}</tr>",
                escape(&l.task),
                score_cell(&key("detected"), Some(l.detected), LOW),
                cell(&key("false_unknown"), &format!("{:.4}", l.false_unknown)),
                cell(&key("unknown_when_known"), &format!("{:.4}", l.unknown_when_known)),
            );
        }
        body.push_str("</table>\n");
        page("ucad bench-routing", &body)
    }
}

fn order_table(body: &mut String, o: usize, order: &Order) {
    let seed = order
        .seed
        .map_or("real sets spread".to_string(), |s| format!("seed {s}"));
    let _ = write!(
        body,
        "<h2>Order {} ({seed})</h2><table><tr><th>tasks</th><th>learned</th><th>test images</th><th>accuracy</th>\
             <th>worst task</th><th>its accuracy</th><th>unknown</th><th>margin p5</th></tr>",
        o + 1
    );
    for (i, s) in order.stages.iter().enumerate() {
        let key = |name: &str| format!("orders.{o}.stages.{i}.{name}");
        let _ = write!(
            body,
            "<tr>{}<td>{}</td>{}{}<td>{}</td>{}{}{}</tr>",
            cell(&key("tasks"), &s.tasks.to_string()),
            escape(&s.learned),
            cell(&key("test_images"), &s.test_images.to_string()),
            score_cell(&key("accuracy"), Some(s.accuracy), LOW),
            escape(&s.worst_task),
            score_cell(&key("worst_accuracy"), Some(s.worst_accuracy), LOW),
            cell(&key("unknown_rate"), &format!("{:.4}", s.unknown_rate)),
            cell(&key("margin_p5"), &finite(s.margin_p5)),
        );
    }
    body.push_str("</table>\n");
    if let Some(last) = order.stages.last().filter(|l| !l.misjudged.is_empty()) {
        body.push_str("<p>After the last task, images judged as another task:</p><table><tr><th>task</th><th>judged as</th><th>images</th><th>of them unknown</th></tr>");
        for m in &last.misjudged {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&m.task),
                escape(&m.judged_as),
                m.images,
                m.unknown
            );
        }
        body.push_str("</table>\n");
    }
}

/// A margin as the JSON report has it: not finite (one task, nothing to tell apart) is `null`.
fn finite(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.3}")
    } else {
        "—".into()
    }
}
