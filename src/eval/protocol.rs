//! The continual protocol of BENCHMARK.md: learn tasks in order; after each, score the test sets
//! of all tasks learned so far without the task id (routing over the bank's keys); then the same
//! with the oracle task id, and an upper reference with a large per-task memory.
//! Plain features (routing) go through the backbone once per image; a task learned with a
//! prompt also has its own images' features under that prompt.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::borrow::Cow;

use anyhow::{ensure, Context, Result};
use image::RgbImage;
use log::{info, warn};

use super::aupro::{pro, AUPRO_MAX_FPR};
use super::continual::Matrix;
use super::feature_cache::FeatureCache;
use super::gallery::Gallery;
use super::metrics::{thinned, TieGroups};
use super::report::{Curves, ImageDecision, Report, Settings, TaskMetrics, Timing};
use crate::backbone::colour::{image_colours, Colour};
use crate::backbone::extract::extract_features;
use crate::backbone::{Backbone, Preprocessor};
use crate::bank::coreset::{gather_rows, greedy_coreset};
use crate::bank::{Bank, Precision, Rows};
use crate::data::dataset::{load_task, read_mask, TaskData};
use crate::data::folder::{load_rgb, save_image};
use crate::detect::knn::KnnIndex;
use crate::detect::map::anomaly_map;
use crate::detect::{image_score, Detector, Judgement, Views};
use crate::fit::expected::{expected_at_threshold, Expected};
use crate::fit::learner::TaskLearner;
use crate::fit::FitParams;
use crate::render::html::jpeg_uri;
use crate::render::overlay::{render, render_within, FrameMap, Verdict};

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub fit: FitParams,
    /// Coreset fraction of the upper reference memory (PatchCore-style, oracle task id).
    pub reference_fraction: f32,
    /// Where to write final-stage heatmaps, one folder per task.
    pub heatmaps: Option<PathBuf>,
    /// Draw the pictures of the report's galleries (for its HTML page).
    pub pictures: bool,
    /// Keep plain features here between runs.
    pub feature_cache: Option<PathBuf>,
    /// Where to save the bank of all tasks (the one the final decisions were made with).
    pub save_bank: Option<PathBuf>,
}

/// A task's data with its features computed once.
struct Prepared {
    data: TaskData,
    train: Vec<Vec<f32>>,
    test: Vec<Vec<f32>>,
    train_colours: Vec<Colour>,
    test_colours: Vec<Colour>,
    /// Test features under the task's own prompt, once it is learned with one.
    test_knowledge: Option<Vec<Vec<f32>>>,
    /// What the task's fit expects at its threshold.
    expected: Option<Expected>,
    truth: Vec<Vec<bool>>,
    /// Side of the anomaly maps and ground truths.
    size: usize,
    train_s: f64,
    test_s: f64,
}

/// How one test image was scored: by which task, how clearly it was routed, and its patch
/// scores relative to that task's threshold (0 = the decision boundary).
struct Scored {
    task: usize,
    /// Routing margin; `None` when the task was given.
    margin: Option<f32>,
    /// Routed as an unknown product (the runtime would fail-safe it).
    unknown: bool,
    /// Routed beyond the nearest task's limit (then judged by a candidate, or unknown).
    beyond: bool,
    /// The judgement's decision ([`Judgement::rejected`]); the reference, which has no
    /// threshold, decides nothing (false) and reports no rates.
    rejected: bool,
    patches: Vec<f32>,
}

/// A whole test set, scored.
struct SetScores {
    scored: Vec<Scored>,
    maps: Vec<Vec<f32>>,
}

pub fn run(
    backbone: &Backbone,
    root: &Path,
    tasks: &[String],
    options: &EvalOptions,
    learner: &dyn TaskLearner,
) -> Result<Report> {
    anyhow::ensure!(!tasks.is_empty(), "no tasks to evaluate");
    let data: Vec<TaskData> = tasks.iter().map(|t| load_task(root, t)).collect::<Result<_>>()?;
    let cache = options.feature_cache.as_deref().map(FeatureCache::new);
    let mut sets: Vec<Prepared> = data
        .into_iter()
        .map(|d| prepare(backbone, cache.as_ref(), d))
        .collect::<Result<_>>()?;
    let dim = backbone.meta.feature_dim();
    let mut bank = Bank::for_backbone(&backbone.spec());
    let mut matrices: Vec<Matrix> = vec![Vec::new(); 4];
    let mut fit_s = Vec::new();
    let mut final_scores = Vec::new();
    let mut final_metrics = Vec::new();
    let mut route_score_ms = 0.0;
    let mut prompts = Vec::new();
    let count = sets.len();
    for t in 0..count {
        let start = Instant::now();
        let set = &mut sets[t];
        let learned = learner.learn(backbone, &set.data, &set.train, &set.train_colours, &options.fit)?;
        ensure!(
            learned.task.key.dim() == dim,
            "task {} has rows of another backbone",
            set.data.name
        );
        fit_s.push(set.train_s + start.elapsed().as_secs_f64());
        set.expected = Some(expected_at_threshold(
            backbone,
            &learned.task,
            &set.data.train,
            &options.fit,
        )?);
        bank.append(learned.task)?;
        set.test_knowledge = learned.test_knowledge;
        prompts.extend(learned.prompt);
        info!("learned {} ({}/{count})", set.data.name, t + 1);
        let detector = Detector::new(&bank)?;
        let scoring = Instant::now();
        let row: Vec<(SetScores, TaskMetrics)> = sets[..=t]
            .iter()
            .enumerate()
            .map(|(j, s)| {
                let scores = score_set(backbone, s, |i| routed(backbone, &detector, s, j, i))?;
                let metrics = measure(s, &scores, j, Some(detector.tasks()[j].threshold));
                Ok((scores, metrics))
            })
            .collect::<Result<_>>()?;
        for (m, matrix) in matrices.iter_mut().enumerate() {
            matrix.push(
                row.iter()
                    .map(|(_, r)| [r.image_auroc, r.pixel_auroc, r.aupro, r.routing_accuracy][m])
                    .collect(),
            );
        }
        if t + 1 == sets.len() {
            route_score_ms = scoring.elapsed().as_secs_f64() * 1e3 / total_test_images(&sets) as f64;
            (final_scores, final_metrics) = row.into_iter().unzip();
        }
    }
    let detector = Detector::new(&bank)?;
    let oracle: Vec<TaskMetrics> = sets
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let scores = score_set(backbone, s, |i| oracle(backbone, &detector, s, j, i))?;
            Ok(measure(s, &scores, j, Some(detector.tasks()[j].threshold)))
        })
        .collect::<Result<_>>()?;
    let reference = upper_reference(backbone, &sets, options)?;
    if let Some(dir) = &options.heatmaps {
        write_heatmaps(backbone, dir, &sets, &final_scores, &detector)?;
    }
    let timing = timing(&sets, fit_s, route_score_ms, cache.is_some());
    let mut report = Report::new(
        backbone,
        tasks,
        &bank,
        matrices,
        final_metrics,
        oracle,
        reference,
        timing,
        settings(options),
    );
    report.prompts = prompts;
    report.decisions = decisions(&sets, &final_scores, &detector);
    if options.pictures {
        report.pictures = gallery_pictures(backbone, &sets, &final_scores, &detector, &report.decisions);
    }
    if let Some(path) = &options.save_bank {
        bank.save(path)?;
    }
    Ok(report)
}

/// Plain features of `images`, through the cache when there is one.
fn features(
    backbone: &Backbone,
    cache: Option<&FeatureCache>,
    images: &[PathBuf],
    label: &str,
) -> Result<Vec<Vec<f32>>> {
    match cache {
        Some(cache) => cache.features(backbone, images, label),
        None => extract_features(backbone, images, label),
    }
}

fn prepare(backbone: &Backbone, cache: Option<&FeatureCache>, data: TaskData) -> Result<Prepared> {
    let start = Instant::now();
    let train = features(backbone, cache, &data.train, &format!("{}: train", data.name))?;
    let train_s = start.elapsed().as_secs_f64();
    let paths: Vec<PathBuf> = data.test.iter().map(|t| t.image.clone()).collect();
    let start = Instant::now();
    let test = features(backbone, cache, &paths, &format!("{}: test", data.name))?;
    let test_s = start.elapsed().as_secs_f64();
    let train_colours = image_colours(&backbone.meta, &data.train, |p| load_rgb(p))?;
    let test_colours = image_colours(&backbone.meta, &paths, |p| load_rgb(p))?;
    let pre = Preprocessor::new(&backbone.meta);
    let truth = data
        .test
        .iter()
        .map(|item| {
            let dims = image::image_dimensions(&item.image)
                .with_context(|| format!("cannot read image {}", item.image.display()))?;
            pre.truth(read_mask(item, dims)?.as_ref())
        })
        .collect::<Result<_>>()?;
    Ok(Prepared {
        data,
        train,
        test,
        train_colours,
        test_colours,
        test_knowledge: None,
        expected: None,
        truth,
        size: pre.size(),
        train_s,
        test_s,
    })
}

fn total_test_images(sets: &[Prepared]) -> usize {
    sets.iter().map(|s| s.test.len()).sum()
}

/// Test image `i` of a prepared set (of task `own`), as the judge sees it: cached plain
/// features, the set's own prompted features for its own task, other prompts run on demand.
struct TestImage<'a> {
    backbone: &'a Backbone,
    set: &'a Prepared,
    own: usize,
    i: usize,
}

impl Views for TestImage<'_> {
    fn plain(&self) -> &[f32] {
        &self.set.test[self.i]
    }

    fn for_task(&self, detector: &Detector, task: usize) -> Result<Cow<'_, [f32]>> {
        match &self.set.test_knowledge {
            Some(knowledge) if task == self.own => return Ok(Cow::Borrowed(&knowledge[self.i])),
            _ if !detector.tasks()[task].prompted() => return Ok(Cow::Borrowed(self.plain())),
            _ => {}
        }
        let path = &self.set.data.test[self.i].image;
        let image = Preprocessor::new(&self.backbone.meta).tensor(&load_rgb(path)?)?;
        detector.task_features(self.backbone, &image, self.plain(), task)
    }
}

impl Scored {
    fn new(detector: &Detector, judgement: Judgement) -> Scored {
        let task = &detector.tasks()[judgement.task];
        Scored {
            task: judgement.task,
            margin: judgement.routing.as_ref().map(|r| r.margin),
            unknown: judgement.unknown,
            beyond: judgement.routing.as_ref().is_some_and(|r| r.beyond),
            rejected: judgement.rejected(),
            patches: task.relative(&judgement.patch_scores).collect(),
        }
    }

    fn verdict(&self, detector: &Detector) -> Verdict {
        let task = &detector.tasks()[self.task];
        Verdict {
            product: task.name.clone(),
            unknown: self.unknown,
            score: image_score(&self.patches) + task.threshold,
            threshold: task.threshold,
            rejected: self.rejected,
        }
    }
}

/// Test image `i` of `set` (task `own`), routed over the bank.
fn routed(backbone: &Backbone, detector: &Detector, set: &Prepared, own: usize, i: usize) -> Result<Scored> {
    let image = TestImage { backbone, set, own, i };
    let judgement = detector.judge(&image, &set.test_colours[i], None, &mut |_| {})?;
    Ok(Scored::new(detector, judgement))
}

/// Test image `i` of `set`, scored by its own task `own`.
fn oracle(backbone: &Backbone, detector: &Detector, set: &Prepared, own: usize, i: usize) -> Result<Scored> {
    let image = TestImage { backbone, set, own, i };
    Ok(Scored::new(detector, detector.judge_as(&image, own)?))
}

fn score_set(backbone: &Backbone, set: &Prepared, scorer: impl Fn(usize) -> Result<Scored>) -> Result<SetScores> {
    let (grid, size) = (backbone.meta.grid(), backbone.meta.input_size);
    let scored: Vec<Scored> = (0..set.test.len()).map(scorer).collect::<Result<_>>()?;
    let maps = scored.iter().map(|s| anomaly_map(&s.patches, grid, size)).collect();
    Ok(SetScores { scored, maps })
}

/// Points kept of each curve a report draws.
const CURVE_POINTS: usize = 128;

/// Metrics of one task's scored test set; `threshold` is the task's own (`None` for the reference).
fn measure(set: &Prepared, scores: &SetScores, own: usize, threshold: Option<f32>) -> TaskMetrics {
    let labels: Vec<bool> = set.data.test.iter().map(|t| t.is_anomalous()).collect();
    let image: Vec<f32> = scores.scored.iter().map(|s| image_score(&s.patches)).collect();
    let images = TieGroups::new(&image, &labels);
    let pixels = TieGroups::new(&scores.maps.concat(), &set.truth.concat());
    let pairs: Vec<(&[f32], &[bool])> = scores
        .maps
        .iter()
        .zip(&set.truth)
        .map(|(m, t)| (&m[..], &t[..]))
        .collect();
    let rate = |anomalous: bool, rejected: bool| {
        let chosen: Vec<bool> = scores
            .scored
            .iter()
            .zip(&labels)
            .filter(|(_, l)| **l == anomalous)
            .map(|(s, _)| s.rejected == rejected)
            .collect();
        (!chosen.is_empty()).then(|| chosen.iter().filter(|c| **c).count() as f64 / chosen.len() as f64)
    };
    let mut margins: Vec<f32> = scores.scored.iter().filter_map(|s| s.margin).collect();
    margins.sort_by(f32::total_cmp);
    let routed = !margins.is_empty();
    let share = |pick: &dyn Fn(&Scored) -> bool| {
        scores.scored.iter().filter(|s| pick(s)).count() as f64 / scores.scored.len() as f64
    };
    let decided = threshold.is_some();
    let pro = pro(&pairs, set.size, AUPRO_MAX_FPR, CURVE_POINTS);
    TaskMetrics {
        task: set.data.name.clone(),
        test_images: labels.len(),
        image_auroc: images.auroc(),
        image_ap: images.average_precision(),
        f1_max: images.f1_max(),
        pixel_auroc: pixels.auroc(),
        pixel_ap: pixels.average_precision(),
        aupro: pro.as_ref().map(|p| p.aupro),
        routing_accuracy: routed.then(|| share(&|s| s.task == own)),
        unknown_rate: routed.then(|| share(&|s| s.unknown)),
        routing_margin_min: margins.first().map(|m| *m as f64),
        routing_margin_median: margins.get(margins.len() / 2).map(|m| *m as f64),
        threshold: threshold.map(f64::from),
        false_reject_rate: rate(false, true).filter(|_| decided),
        escape_rate: rate(true, false).filter(|_| decided),
        expected_escape_rate: set.expected.as_ref().map(|e| e.escape).filter(|_| decided),
        curves: Curves {
            roc: images.roc().map_or_else(Vec::new, |c| thinned(&c, CURVE_POINTS)),
            pro: pro.map_or_else(Vec::new, |p| p.curve),
        },
    }
}

/// PatchCore-style per-task scoring with the oracle task id and a memory of `reference_fraction`
/// of all training patches (greedy coreset), k = 1: what the compact bank is measured against.
fn upper_reference(backbone: &Backbone, sets: &[Prepared], options: &EvalOptions) -> Result<Vec<TaskMetrics>> {
    let dim = backbone.meta.feature_dim();
    sets.iter()
        .map(|set| {
            let start = Instant::now();
            let memory = set.train.concat();
            let count = ((memory.len() / dim) as f32 * options.reference_fraction).ceil() as usize;
            let rows = gather_rows(&memory, dim, &greedy_coreset(&memory, dim, count, options.fit.seed));
            let index = KnnIndex::new(Rows::new(dim, rows, Precision::F32))?;
            let scores = score_set(backbone, set, |i| {
                Ok(Scored {
                    task: 0,
                    margin: None,
                    unknown: false,
                    beyond: false,
                    rejected: false,
                    patches: index.search(&set.test[i], 1, None)?,
                })
            })?;
            info!(
                "{}: reference memory {count} rows, {:.1} s",
                set.data.name,
                start.elapsed().as_secs_f64()
            );
            Ok(measure(set, &scores, 0, None))
        })
        .collect()
}

fn write_heatmaps(
    backbone: &Backbone,
    dir: &Path,
    sets: &[Prepared],
    scores: &[SetScores],
    detector: &Detector,
) -> Result<()> {
    let pre = Preprocessor::new(&backbone.meta);
    for (set, scores) in sets.iter().zip(scores) {
        for (item, scored) in set.data.test.iter().zip(&scores.scored) {
            let stem = item
                .image
                .file_stem()
                .expect("listed files have names")
                .to_string_lossy();
            let path = dir.join(&set.data.name).join(format!("{}_{stem}.png", item.defect));
            save_image(&picture(&pre, detector, &item.image, scored, None)?, &path)?;
        }
    }
    info!("heatmaps written to {}", dir.display());
    Ok(())
}

/// Frames are shown within a square of this side in a report's galleries.
const GALLERY_FRAME: u32 = 320;

/// The overlays the report's galleries show, by index into `decisions`, as data URIs. An image
/// that cannot be drawn is left without its picture (and logged): the report still comes out.
fn gallery_pictures(
    backbone: &Backbone,
    sets: &[Prepared],
    scores: &[SetScores],
    detector: &Detector,
    decisions: &[ImageDecision],
) -> BTreeMap<usize, String> {
    let wanted: BTreeSet<usize> = (sets.iter())
        .flat_map(|s| Gallery::ALL.map(|g| g.cases(decisions, &s.data.name)))
        .flatten()
        .collect();
    let pre = Preprocessor::new(&backbone.meta);
    let mut pictures = BTreeMap::new();
    let images = sets
        .iter()
        .zip(scores)
        .flat_map(|(set, scores)| set.data.test.iter().zip(&scores.scored));
    for (index, (item, scored)) in images.enumerate().filter(|(i, _)| wanted.contains(i)) {
        let drawn = picture(&pre, detector, &item.image, scored, Some(GALLERY_FRAME));
        match drawn.and_then(|d| jpeg_uri(&d)) {
            Ok(uri) => _ = pictures.insert(index, uri),
            Err(e) => warn!("no picture of {} in the report: {e:#}", item.image.display()),
        }
    }
    pictures
}

/// A test image's overlay, its frame within a `bound`×`bound` square (at its own size without).
fn picture(
    pre: &Preprocessor,
    detector: &Detector,
    path: &Path,
    scored: &Scored,
    bound: Option<u32>,
) -> Result<RgbImage> {
    let frame = load_rgb(path)?;
    let threshold = detector.tasks()[scored.task].threshold;
    let map = FrameMap::new(&scored.patches, pre.geometry(frame.width(), frame.height())?, threshold)?;
    let verdict = scored.verdict(detector);
    match bound {
        Some(bound) => render_within(&frame, &map, &verdict, bound),
        None => render(&frame, &map, &verdict),
    }
}

/// The settings a report states, from the options the run was made with.
fn settings(options: &EvalOptions) -> Settings {
    Settings {
        key_rows: options.fit.key_rows,
        knowledge_fraction: options.fit.knowledge_fraction,
        knowledge_dims: options.fit.knowledge_dims,
        task_budget_bytes: options.fit.task_budget_bytes,
        k: options.fit.k,
        holdout: options.fit.holdout,
        target_false_reject: options.fit.target_false_reject,
        precision: format!("{:?}", options.fit.precision).to_lowercase(),
        seed: options.fit.seed,
        reference_fraction: options.reference_fraction,
        aupro_max_fpr: AUPRO_MAX_FPR,
    }
}

fn decisions(sets: &[Prepared], scores: &[SetScores], detector: &Detector) -> Vec<ImageDecision> {
    let mut decisions = Vec::new();
    for (set, scores) in sets.iter().zip(scores) {
        for (item, scored) in set.data.test.iter().zip(&scores.scored) {
            decisions.push(ImageDecision {
                image: item.image.display().to_string(),
                task: set.data.name.clone(),
                defect: item.defect.clone(),
                judged_as: detector.tasks()[scored.task].name.clone(),
                unknown: scored.unknown,
                beyond_limit: scored.beyond,
                rejected: scored.rejected,
                score_minus_threshold: image_score(&scored.patches),
            });
        }
    }
    decisions
}

/// `route_score_ms`: routing, scoring and map per image in the final stage (all tasks learned).
fn timing(sets: &[Prepared], fit_s: Vec<f64>, route_score_ms: f64, feature_cache: bool) -> Timing {
    let backbone_ms = sets.iter().map(|s| s.test_s).sum::<f64>() * 1e3 / total_test_images(sets) as f64;
    Timing {
        fit_s_per_task: fit_s.iter().sum::<f64>() / fit_s.len() as f64,
        fit_s,
        ms_per_image: backbone_ms + route_score_ms,
        backbone_ms_per_image: backbone_ms,
        route_score_ms_per_image: route_score_ms,
        threads: crate::parallel::threads(),
        feature_cache,
    }
}
