//! What `ucad bench-routing` reports, and its table.

use std::fmt;

use serde::Serialize;

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
