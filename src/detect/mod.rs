//! Task-agnostic inference over a bank: route an image to the product it looks like, score its
//! patches against that product's knowledge, decide against that product's threshold.

mod index;
pub mod judge;
#[allow(unsafe_code)] // SAFETY comments at each block
pub(crate) mod knn;
pub mod map;

use std::borrow::Cow;

use anyhow::{ensure, Result};
use tract_core::prelude::Tensor;

use crate::backbone::colour::Colour;
use crate::backbone::Backbone;
use crate::bank::Bank;
pub(crate) use index::Signals;
pub use index::TaskIndex;
pub use judge::Judgement;
pub use judge::{Stage, Views};

/// An image's descriptor from its plain patch features (rows of `dim`): per dimension, the mean
/// of the middle half of the patches' values (the interquartile mean). The image-level routing
/// signal compares these. The middle half ignores a defect on less than a quarter of the part,
/// which would move a plain mean (docs/LIMITS.md).
pub(crate) fn descriptor(plain: &[f32], dim: usize) -> Vec<f32> {
    let rows = plain.len() / dim.max(1);
    let (low, kept) = (rows / 4, rows - 2 * (rows / 4));
    let mut column = vec![0f32; rows];
    (0..dim)
        .map(|d| {
            if rows == 0 {
                return 0.0;
            }
            column
                .iter_mut()
                .zip(plain.chunks_exact(dim))
                .for_each(|(c, row)| *c = row[d]);
            column.select_nth_unstable_by(low, f32::total_cmp);
            let upper = &mut column[low..];
            upper.select_nth_unstable_by(kept - 1, f32::total_cmp);
            upper[..kept].iter().sum::<f32>() / kept as f32
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// The task with the smallest routing distance ([`Signals::combined`]).
    pub task: usize,
    /// Its normalised distance (0 = a typical normal part of that task).
    pub distance: f32,
    /// Second-best normalised distance minus the best (∞ with one task): how clear the choice was.
    pub margin: f32,
    /// The nearest task's distance is beyond what its normal parts produce, or the image's
    /// colours are not its: an unknown product, or a part with a large defect (see
    /// [`Detector::resolve`]).
    pub beyond: bool,
    /// The [`CANDIDATES`] nearest tasks whose colours the image has, nearest first.
    pub candidates: Vec<usize>,
}

/// Tasks of the image's colours compared by their knowledge when the nearest task's routing
/// distance is beyond its limit or the image is not in its colours.
pub(crate) const CANDIDATES: usize = 3;

/// Share of an image's patches unlike a candidate's normal ones above which that candidate does
/// not explain the image (chosen on validation runs, docs/LIMITS.md).
const UNLIKE_SHARE_LIMIT: f32 = 0.75;

/// What a routed image is judged as: a task and its patch scores, or an unknown product.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub task: usize,
    pub patch_scores: Vec<f32>,
    /// No candidate's knowledge explains a quarter of the image.
    pub unknown: bool,
}

pub struct Detector {
    tasks: Vec<TaskIndex>,
}

impl Detector {
    pub fn new(bank: &Bank) -> Result<Detector> {
        Detector::from_indexes(bank.tasks.iter().map(TaskIndex::new).collect::<Result<_>>()?)
    }

    /// A detector over tasks already indexed, in learning order; at least one.
    pub(crate) fn from_indexes(tasks: Vec<TaskIndex>) -> Result<Detector> {
        ensure!(!tasks.is_empty(), "the bank has no tasks: fit one first");
        Ok(Detector { tasks })
    }

    /// The tasks, in learning order.
    pub fn tasks(&self) -> &[TaskIndex] {
        &self.tasks
    }

    pub(crate) fn route(&self, plain: &[f32], colour: &Colour) -> Result<Routing> {
        let descriptor = descriptor(plain, self.tasks[0].dim());
        let distances: Vec<f32> = self
            .tasks
            .iter()
            .map(|t| t.routing_distance(plain, &descriptor))
            .collect::<Result<_>>()?;
        let limits: Vec<f32> = self.tasks.iter().map(|t| t.routing.unknown_above).collect();
        let colour_fits: Vec<bool> = self.tasks.iter().map(|t| t.routing.colour.fits(colour)).collect();
        Ok(decide_route(&distances, &limits, &colour_fits))
    }

    /// The features a task scores: its prompted pass when it has a prompt, else the plain ones.
    pub fn task_features<'a>(
        &self,
        backbone: &Backbone,
        image: &Tensor,
        plain: &'a [f32],
        task: usize,
    ) -> Result<Cow<'a, [f32]>> {
        Ok(match self.tasks[task].prompt() {
            Some(prompt) => Cow::Owned(backbone.features(image.clone(), Some(prompt))?),
            None => Cow::Borrowed(plain),
        })
    }

    /// The verdict on a routed image from the nearest task's patch scores. Within its limit,
    /// that task. Beyond it (a large defect also raises the routing distance, and products of
    /// very uniform images have a narrow spread), the nearest candidate whose knowledge explains
    /// at least a quarter of the patches, scored by `score`; an unknown product when no
    /// candidate does (then shown against the nearest candidate, or the nearest task when no
    /// task has the image's colours).
    pub fn resolve(
        &self,
        routing: &Routing,
        nearest: Vec<f32>,
        mut score: impl FnMut(usize) -> Result<Vec<f32>>,
    ) -> Result<Verdict> {
        if !routing.beyond {
            return Ok(Verdict {
                task: routing.task,
                patch_scores: nearest,
                unknown: false,
            });
        }
        // The nearest candidate's scores, shown if nothing explains the image.
        let mut shown: Option<(usize, Vec<f32>)> = None;
        for &task in &routing.candidates {
            let patch_scores = if task == routing.task {
                nearest.clone()
            } else {
                score(task)?
            };
            if self.tasks[task].unlike_share(&patch_scores) <= UNLIKE_SHARE_LIMIT {
                return Ok(Verdict {
                    task,
                    patch_scores,
                    unknown: false,
                });
            }
            shown.get_or_insert((task, patch_scores));
        }
        let (task, patch_scores) = shown.unwrap_or((routing.task, nearest));
        Ok(Verdict {
            task,
            patch_scores,
            unknown: true,
        })
    }
}

/// An image's anomaly score: its worst patch. A NaN patch score counts as the worst (`max`
/// would skip it and could pass the part).
pub(crate) fn image_score(patch_scores: &[f32]) -> f32 {
    patch_scores
        .iter()
        .map(|s| if s.is_nan() { f32::INFINITY } else { *s })
        .fold(f32::NEG_INFINITY, f32::max)
}

/// The routing decision from each task's routing distance, unknown-product limit and whether
/// the image has its colours: the nearest task, unless it is beyond its limit or of other
/// colours.
pub(crate) fn decide_route(distances: &[f32], limits: &[f32], colour_fits: &[bool]) -> Routing {
    let mut order: Vec<usize> = (0..distances.len()).collect();
    order.sort_by(|a, b| distances[*a].total_cmp(&distances[*b]));
    let best = order[0];
    let margin = order.get(1).map_or(f32::INFINITY, |s| distances[*s] - distances[best]);
    Routing {
        task: best,
        distance: distances[best],
        margin,
        beyond: distances[best] > limits[best] || !colour_fits[best],
        candidates: order.into_iter().filter(|t| colour_fits[*t]).take(CANDIDATES).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::Task;
    use crate::bank::{Precision, Rows};

    /// A one-row task whose patch scores are distances to `centre` in one dimension.
    fn task(name: &str, centre: f32) -> Task {
        let row = || Rows::new(1, vec![centre], Precision::F32);
        let mut task = Task::uncalibrated(name, row(), None, row(), 1);
        task.routing.unknown_above = 15.0;
        task.routing.patch_limit = 0.5;
        task
    }

    #[test]
    fn beyond_the_limit_the_nearest_candidate_that_explains_the_image_judges_or_none_does() {
        let detector = Detector {
            tasks: ["a", "b", "c"]
                .iter()
                .zip([0.0, 10.0, 20.0])
                .map(|(n, c)| TaskIndex::new(&task(n, c)).unwrap())
                .collect(),
        };
        let scores = |features: &[f32], t: usize| detector.tasks[t].patch_scores(features).unwrap();
        let routed = |distances: [f32; 3]| decide_route(&distances, &[15.0; 3], &[true; 3]);
        let judge = |features: &[f32], routing: &Routing| {
            let nearest = scores(features, routing.task);
            detector.resolve(routing, nearest, |t| Ok(scores(features, t))).unwrap()
        };
        // Within the limit: the nearest task, whatever the patches.
        let v = judge(&[9.0, 9.0, 9.0], &routed([1.0, 2.0, 3.0]));
        assert_eq!((v.task, v.unknown), (0, false));
        // Beyond it: b's knowledge explains two of three patches; a's and c's none.
        let v = judge(&[10.0, 10.2, 3.0], &routed([16.0, 17.0, 18.0]));
        assert_eq!((v.task, v.unknown, v.patch_scores.len()), (1, false, 3));
        // Beyond it, a explains a quarter of the patches and b three quarters: the nearer, a.
        let v = judge(&[0.1, 10.0, 10.1, 10.2], &routed([16.0, 17.0, 18.0]));
        assert_eq!((v.task, v.unknown), (0, false));
        // Beyond it, and no candidate explains at least a quarter of the patches: unknown.
        let v = judge(&[5.0, 15.0, 25.0], &routed([16.0, 17.0, 18.0]));
        assert!(v.unknown);
        // Within the limit but not in a's colours: b, whose colours the image has, judges it.
        let routing = decide_route(&[1.0, 2.0, 3.0], &[15.0; 3], &[false, true, false]);
        assert_eq!(routing.candidates, [1]);
        let v = judge(&[10.0, 10.2, 3.0], &routing);
        assert_eq!((v.task, v.unknown), (1, false));
        // Nothing of b's explains it: unknown, shown against b, the nearest of its colours.
        let v = judge(&[5.0, 15.0, 25.0], &routing);
        assert_eq!((v.task, v.unknown), (1, true));
        // No candidate has the image's colours: unknown, whatever the patches.
        let v = judge(
            &[0.0, 0.0, 0.0],
            &decide_route(&[1.0, 2.0, 3.0], &[15.0; 3], &[false; 3]),
        );
        assert!(v.unknown);
    }

    #[test]
    fn the_descriptor_is_the_interquartile_mean_and_ignores_a_defect_on_a_quarter_of_the_patches() {
        // Eight patches of two dims: dim 0 normal at 1 with a defect of 100 on two patches, dim 1
        // the values 0..8 in a shuffled order.
        let patches = [
            [1.0, 5.0],
            [100.0, 0.0],
            [1.0, 7.0],
            [1.0, 2.0],
            [1.0, 1.0],
            [100.0, 6.0],
            [1.0, 3.0],
            [1.0, 4.0],
        ];
        assert_eq!(descriptor(&patches.concat(), 2), [1.0, 3.5]);
        assert_eq!(descriptor(&[2.0, 4.0], 2), [2.0, 4.0]);
        assert_eq!(descriptor(&[], 2), [0.0, 0.0]);
    }

    #[test]
    fn a_nan_patch_score_is_the_worst_and_mismatched_features_are_an_error() {
        assert_eq!(image_score(&[0.5, f32::NAN, 0.2]), f32::INFINITY);
        assert_eq!(image_score(&[0.5, 0.2]), 0.5);
        let index = TaskIndex::new(&task("a", 0.0)).unwrap();
        let two_dims = TaskIndex::new(&Task::uncalibrated(
            "b",
            Rows::new(2, vec![0.0; 2], Precision::F32),
            None,
            Rows::new(2, vec![0.0; 2], Precision::F32),
            1,
        ))
        .unwrap();
        assert!(two_dims.patch_scores(&[1.0, 2.0, 3.0]).is_err());
        assert!(two_dims.key_distance(&[1.0]).is_err());
        assert!(index.patch_scores(&[]).is_err());
    }

    /// `images` images of 16 patches of dim 32: patch i is `pattern(i)` plus uniform noise of
    /// `noise`.
    fn images(images: usize, noise: f32, pattern: impl Fn(usize) -> f32, seed: u64) -> Vec<Vec<f32>> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..images)
            .map(|_| {
                (0..16 * 32)
                    .map(|v| pattern(v) + rng.random_range(-noise..=noise))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_loosely_spread_task_no_longer_attracts_the_images_of_a_tight_one() {
        use crate::fit::{fit_from_features, FitParams};
        let params = FitParams {
            key_rows: 16,
            knowledge_dims: 0,
            precision: Precision::F32,
            ..FitParams::default()
        };
        let colours = vec![[100.0; crate::backbone::colour::COLOUR_DIMS]; 40];
        let tight_pattern = |v: usize| 2.0 + (v % 5) as f32 * 0.1;
        let fit = |name, features: &[Vec<f32>]| {
            TaskIndex::new(&fit_from_features(name, features, &colours, 32, &params).unwrap()).unwrap()
        };
        let tight = fit("tight", &images(40, 0.1, tight_pattern, 1));
        // A busy texture: every patch anywhere in a wide box, so its own parts spread widely.
        let loose = fit("loose", &images(40, 3.0, |_| 0.0, 2));
        // Parts of the tight product a little off its normal ones.
        let parts = images(20, 0.13, tight_pattern, 3);
        let signals = |task: &TaskIndex, f: &[f32]| task.routing_signals(f, &descriptor(f, 32)).unwrap();
        let (mut attracted_before, mut attracted_now) = (0, 0);
        for part in &parts {
            let (own, other) = (signals(&tight, part), signals(&loose, part));
            attracted_before += (other.patch < own.patch) as usize;
            attracted_now += (other.combined() < own.combined()) as usize;
        }
        // On the patch key alone, in each task's own units, the loose task is nearer.
        assert_eq!(attracted_before, parts.len(), "the construction lost its point");
        assert_eq!(attracted_now, 0);
        let detector = Detector {
            tasks: vec![loose, tight],
        };
        let routing = detector
            .route(&parts[0], &[100.0; crate::backbone::colour::COLOUR_DIMS])
            .unwrap();
        assert_eq!(routing.task, 1);
    }

    #[test]
    fn candidates_are_the_nearest_tasks_of_the_image_colours() {
        let fits = [false, true, false, true, true, true];
        let routing = decide_route(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[15.0; 6], &fits);
        assert_eq!((routing.task, routing.beyond), (0, true));
        assert_eq!(routing.candidates, [1, 3, 4]);
    }
}
