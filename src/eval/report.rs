//! The evaluation report: the JSON keys of BENCHMARK.md and a readable table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::continual::{backward_transfer, final_mean, forgetting, mean, Matrix};
use crate::backbone::Backbone;
use crate::bank::Bank;
use crate::fit::learner::PromptSummary;

#[derive(Debug, Clone, Serialize)]
pub struct TaskMetrics {
    pub task: String,
    pub test_images: usize,
    pub image_auroc: Option<f64>,
    pub image_ap: Option<f64>,
    pub f1_max: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub pixel_ap: Option<f64>,
    pub aupro: Option<f64>,
    /// Share of the task's test images routed to it, unknown verdicts included (`None` when
    /// the task id was given).
    pub routing_accuracy: Option<f64>,
    /// Share of the task's test images taken for an unknown product (fail-safe rejects).
    pub unknown_rate: Option<f64>,
    pub routing_margin_min: Option<f64>,
    pub routing_margin_median: Option<f64>,
    pub threshold: Option<f64>,
    /// Normal test images rejected at the calibrated threshold of the task they were routed to.
    pub false_reject_rate: Option<f64>,
    /// Defective test images passed.
    pub escape_rate: Option<f64>,
    /// What the fit expected: drawn defects on held-out normal images passed
    /// (fit/expected.rs).
    pub expected_escape_rate: Option<f64>,
    pub curves: Curves,
}

/// A task's curves, thinned to what a chart needs (empty where undefined).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Curves {
    /// Image-level ROC: (false-positive rate, true-positive rate).
    pub roc: Vec<[f64; 2]>,
    /// Pixel-level PRO curve up to the AUPRO cut-off: (false-positive rate, region overlap).
    pub pro: Vec<[f64; 2]>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// Feature extraction of the training images plus prompt learning, coresets and
    /// calibration, per task (mean, and each task in order).
    pub fit_s_per_task: f64,
    pub fit_s: Vec<f64>,
    /// Backbone throughput plus routing and scoring, per test image.
    pub ms_per_image: f64,
    /// Wall time of test-image feature extraction over `threads` workers, per image.
    pub backbone_ms_per_image: f64,
    pub route_score_ms_per_image: f64,
    pub threads: usize,
    /// Features were read through the feature cache: backbone and fit times then count reading
    /// them, not computing them.
    pub feature_cache: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackboneInfo {
    pub file: String,
    pub sha256: String,
    pub arch: String,
    pub blocks: Vec<usize>,
    pub input_size: usize,
    pub quant: String,
    /// What the backbone computed in.
    pub arithmetic: String,
}

impl BackboneInfo {
    pub fn of(backbone: &Backbone) -> BackboneInfo {
        let meta = &backbone.meta;
        BackboneInfo {
            file: backbone.path.display().to_string(),
            sha256: backbone.file_sha256.clone(),
            arch: meta.arch.name().to_string(),
            blocks: meta.feature_blocks.clone(),
            input_size: meta.input_size,
            quant: meta.quant.name().to_string(),
            arithmetic: backbone.arithmetic.name().to_string(),
        }
    }

    /// `vit-b16-clip blocks [5], 224 px, int8 weights computing in f32`.
    pub fn describe(&self) -> String {
        format!(
            "{} blocks {:?}, {} px, {} weights computing in {}",
            self.arch, self.blocks, self.input_size, self.quant, self.arithmetic
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricMeans {
    pub image_auroc: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub aupro: Option<f64>,
    pub image_ap: Option<f64>,
    pub pixel_ap: Option<f64>,
    pub f1_max: Option<f64>,
}

impl MetricMeans {
    fn of(rows: &[TaskMetrics]) -> MetricMeans {
        let avg = |f: fn(&TaskMetrics) -> Option<f64>| mean(rows.iter().filter_map(f));
        MetricMeans {
            image_auroc: avg(|r| r.image_auroc),
            pixel_auroc: avg(|r| r.pixel_auroc),
            aupro: avg(|r| r.aupro),
            image_ap: avg(|r| r.image_ap),
            pixel_ap: avg(|r| r.pixel_ap),
            f1_max: avg(|r| r.f1_max),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PerMetric {
    pub image_auroc: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub aupro: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Matrices {
    pub image_auroc: Matrix,
    pub pixel_auroc: Matrix,
    pub aupro: Matrix,
    /// Share of each learned task's test images routed to it, after each stage.
    pub routing: Matrix,
}

#[derive(Debug, Clone, Serialize)]
pub struct BankSize {
    pub bytes: usize,
    pub bytes_per_task: usize,
    /// Key, projection, knowledge and prompt bytes of each task.
    pub task_bytes: Vec<(String, usize)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub key_rows: usize,
    pub knowledge_fraction: f32,
    pub knowledge_dims: usize,
    pub task_budget_bytes: usize,
    pub k: usize,
    pub holdout: f32,
    pub target_false_reject: f32,
    pub precision: String,
    pub seed: u64,
    pub reference_fraction: f32,
    pub aupro_max_fpr: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    pub coreset_fraction: f32,
    #[serde(flatten)]
    pub summary: MetricMeans,
    pub per_task: Vec<TaskMetrics>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Oracle {
    #[serde(flatten)]
    pub summary: MetricMeans,
    pub per_task: Vec<TaskMetrics>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tasks: Vec<String>,
    pub backbone: BackboneInfo,
    pub settings: Settings,
    #[serde(rename = "final")]
    pub final_: MetricMeans,
    pub forgetting: PerMetric,
    pub bwt: PerMetric,
    pub routing_accuracy: f64,
    pub oracle: Oracle,
    pub reference: Reference,
    pub matrix: Matrices,
    pub per_task: Vec<TaskMetrics>,
    pub bank: BankSize,
    pub timing: Timing,
    /// How each task's prompt was learned (empty without prompts).
    pub prompts: Vec<PromptSummary>,
    /// Every test image's judgement once all tasks are learned, in task and test-set order.
    pub decisions: Vec<ImageDecision>,
    /// Overlays of the decisions the HTML page's galleries show (data URIs), by index into
    /// `decisions`; drawn only for that page.
    #[serde(skip)]
    pub pictures: BTreeMap<usize, String>,
}

/// One test image as the final bank judged it (routed, as a device would).
#[derive(Debug, Clone, Serialize)]
pub struct ImageDecision {
    pub image: String,
    /// The task whose test set holds the image.
    pub task: String,
    /// `good`, or the defect's kind (its folder in the test set).
    pub defect: String,
    /// The task it was judged against (for an unknown product: the one it is shown against).
    pub judged_as: String,
    pub unknown: bool,
    /// Routed beyond the nearest task's limit: judged by a candidate that explains it, or unknown.
    pub beyond_limit: bool,
    pub rejected: bool,
    /// Image score minus the judging task's threshold.
    pub score_minus_threshold: f32,
}

impl ImageDecision {
    /// The image shows a defect (its test folder is not `good`).
    pub fn defective(&self) -> bool {
        self.defect != crate::data::dataset::GOOD
    }
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backbone: &Backbone,
        tasks: &[String],
        bank: &Bank,
        matrices: Vec<Matrix>,
        per_task: Vec<TaskMetrics>,
        oracle: Vec<TaskMetrics>,
        reference: Vec<TaskMetrics>,
        timing: Timing,
        settings: Settings,
    ) -> Report {
        let [image_auroc, pixel_auroc, aupro, routing]: [Matrix; 4] = matrices.try_into().expect("four matrices");
        let over = |f: fn(&Matrix) -> Option<f64>| PerMetric {
            image_auroc: f(&image_auroc),
            pixel_auroc: f(&pixel_auroc),
            aupro: f(&aupro),
        };
        let (forgetting, bwt) = (over(forgetting), over(backward_transfer));
        debug_assert_eq!(final_mean(&image_auroc), MetricMeans::of(&per_task).image_auroc);
        let images: usize = per_task.iter().map(|t| t.test_images).sum();
        let routed: f64 = per_task
            .iter()
            .map(|t| t.routing_accuracy.unwrap_or(0.0) * t.test_images as f64)
            .sum();
        let routing_accuracy = routed / images.max(1) as f64;
        let bytes = bank.to_bytes().len();
        let reference_fraction = settings.reference_fraction;
        Report {
            tasks: tasks.to_vec(),
            backbone: BackboneInfo::of(backbone),
            settings,
            final_: MetricMeans::of(&per_task),
            forgetting,
            bwt,
            routing_accuracy,
            oracle: Oracle {
                summary: MetricMeans::of(&oracle),
                per_task: oracle,
            },
            reference: Reference {
                coreset_fraction: reference_fraction,
                summary: MetricMeans::of(&reference),
                per_task: reference,
            },
            matrix: Matrices {
                image_auroc,
                pixel_auroc,
                aupro,
                routing,
            },
            per_task,
            decisions: Vec::new(),
            pictures: BTreeMap::new(),
            bank: BankSize {
                bytes,
                bytes_per_task: bytes / tasks.len().max(1),
                task_bytes: bank.bytes_per_task(),
            },
            timing,
            prompts: Vec::new(),
        }
    }

    /// The human-readable table printed by `ucad eval`.
    pub fn table(&self) -> String {
        let f = |v: Option<f64>| v.map_or("  —  ".to_string(), |v| format!("{v:.3}"));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "backbone {} blocks {:?} ({}, computing in {}), {} key rows, knowledge {}% coreset in ≤ {} dims ({}), ≤ {} bytes/task, k {}",
            self.backbone.arch,
            self.backbone.blocks,
            self.backbone.quant,
            self.backbone.arithmetic,
            self.settings.key_rows,
            self.settings.knowledge_fraction * 100.0,
            self.settings.knowledge_dims,
            self.settings.precision,
            self.settings.task_budget_bytes,
            self.settings.k
        );
        let _ = writeln!(
            out,
            "{:<16} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} | {:>7} {:>7} | {:>7} {:>7}",
            "task",
            "img",
            "pix",
            "aupro",
            "f1max",
            "route",
            "margin",
            "unk",
            "FRR",
            "esc",
            "esc~",
            "orc.img",
            "orc.pro",
            "ref.img",
            "ref.pro"
        );
        for ((t, o), r) in self
            .per_task
            .iter()
            .zip(&self.oracle.per_task)
            .zip(&self.reference.per_task)
        {
            let _ = writeln!(
                out,
                "{:<16} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} | {:>7} {:>7} | {:>7} {:>7}",
                t.task,
                f(t.image_auroc),
                f(t.pixel_auroc),
                f(t.aupro),
                f(t.f1_max),
                f(t.routing_accuracy),
                f(t.routing_margin_min),
                f(t.unknown_rate),
                f(t.false_reject_rate),
                f(t.escape_rate),
                f(t.expected_escape_rate),
                f(o.image_auroc),
                f(o.aupro),
                f(r.image_auroc),
                f(r.aupro)
            );
        }
        let s = &self.final_;
        let _ = writeln!(
            out,
            "final: image AUROC {} pixel AUROC {} AUPRO {} image AP {} pixel AP {} F1-max {}",
            f(s.image_auroc),
            f(s.pixel_auroc),
            f(s.aupro),
            f(s.image_ap),
            f(s.pixel_ap),
            f(s.f1_max)
        );
        let _ = writeln!(
            out,
            "forgetting (image/pixel/aupro) {} {} {}; BWT {} {} {}; routing accuracy {:.4}",
            f(self.forgetting.image_auroc),
            f(self.forgetting.pixel_auroc),
            f(self.forgetting.aupro),
            f(self.bwt.image_auroc),
            f(self.bwt.pixel_auroc),
            f(self.bwt.aupro),
            self.routing_accuracy
        );
        let _ = writeln!(
            out,
            "oracle: image AUROC {} pixel AUROC {} AUPRO {}; {}% reference: {} {} {}",
            f(self.oracle.summary.image_auroc),
            f(self.oracle.summary.pixel_auroc),
            f(self.oracle.summary.aupro),
            self.reference.coreset_fraction * 100.0,
            f(self.reference.summary.image_auroc),
            f(self.reference.summary.pixel_auroc),
            f(self.reference.summary.aupro)
        );
        let _ = writeln!(
            out,
            "bank {} bytes ({} per task: {:?}); fit {:.1} s/task; {:.1} ms/image (backbone {:.1} on {} threads + route/score {:.2})",
            self.bank.bytes,
            self.bank.bytes_per_task,
            self.bank.task_bytes,
            self.timing.fit_s_per_task,
            self.timing.ms_per_image,
            self.timing.backbone_ms_per_image,
            self.timing.threads,
            self.timing.route_score_ms_per_image
        );
        for p in &self.prompts {
            let _ = writeln!(
                out,
                "prompt {}: {:.1} s on {} images, epoch {} of {} kept, held-out SCL loss {:.4} → {:.4}",
                p.task, p.train_s, p.train_images, p.best_epoch, p.epochs, p.initial_held_loss, p.best_held_loss
            );
        }
        if self.timing.feature_cache {
            let _ = writeln!(
                out,
                "(features through the cache: backbone and fit times may be reading times)"
            );
        }
        out
    }
}
