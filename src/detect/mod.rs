//! Task-agnostic inference over a bank: route an image to the product it looks like, score its
//! patches against that product's knowledge, decide against that product's threshold.

pub mod fit;
pub mod heatmap;
pub mod knn;
pub mod map;

use std::borrow::Cow;

use anyhow::{ensure, Result};
use tract_core::prelude::Tensor;

use crate::backbone::{Backbone, Prompt};
use crate::bank::projection::ProjectionIndex;
use crate::bank::{Bank, RoutingStats, Task};
use knn::KnnIndex;

/// One task, ready to search.
pub struct TaskIndex {
    pub name: String,
    key: KnnIndex,
    projection: Option<ProjectionIndex>,
    knowledge: KnnIndex,
    prompt: Option<Prompt>,
    k: usize,
    pub threshold: f32,
    pub routing: RoutingStats,
}

impl TaskIndex {
    pub fn new(task: &Task) -> TaskIndex {
        let prompt = task.prompt.as_ref().map(|p| Prompt {
            blocks: p.blocks as usize,
            len: p.len as usize,
            dim: p.rows.dim(),
            data: p.rows.to_f32(),
        });
        TaskIndex {
            name: task.name.clone(),
            key: KnnIndex::new(task.key.clone()),
            projection: task.projection.as_ref().map(ProjectionIndex::new),
            knowledge: KnnIndex::new(task.knowledge.clone()),
            prompt,
            k: task.k as usize,
            threshold: task.threshold,
            routing: task.routing.clone(),
        }
    }

    /// Median over patches of the 1-NN distance to the key. UCAD takes the mean; the median
    /// ignores a defect (up to half the patches), which must not send a part elsewhere.
    pub fn key_distance(&self, plain: &[f32]) -> f32 {
        let mut found = self.key.search(plain, 1, None);
        let middle = found.len() / 2;
        *found.select_nth_unstable_by(middle, f32::total_cmp).1
    }

    /// The routing distance in standard deviations of this task's held-out normal images'
    /// (0 = typical): comparable across products, whose raw distances are on other scales.
    pub fn normalised_distance(&self, plain: &[f32]) -> f32 {
        (self.key_distance(plain) - self.routing.mean) / self.routing.std
    }

    /// Whether an image routed here is an unknown product: beyond the task's routing limit, and
    /// most of its patches unlike any normal patch of the task. A defect raises the routing
    /// distance too, but leaves most of the part as it should be.
    pub fn is_unknown(&self, routing: &Routing, patch_scores: &[f32]) -> bool {
        let unlike = patch_scores.iter().filter(|s| **s > self.routing.patch_limit).count();
        routing.beyond && unlike * 2 > patch_scores.len()
    }

    /// Scores relative to this task's threshold (0 = the decision boundary), as reports, maps
    /// and audits show them.
    pub fn relative<'a>(&'a self, patch_scores: &'a [f32]) -> impl Iterator<Item = f32> + 'a {
        patch_scores.iter().map(|s| s - self.threshold)
    }

    /// Per-patch mean distance to the k nearest knowledge rows.
    pub fn patch_scores(&self, features: &[f32]) -> Vec<f32> {
        match &self.projection {
            Some(projection) => {
                let projected = projection.apply(features);
                self.knowledge
                    .search(&projected.coefficients, self.k, Some(&projected.residuals))
            }
            None => self.knowledge.search(features, self.k, None),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// The task with the smallest normalised routing distance.
    pub task: usize,
    /// Its normalised distance (0 = a typical normal part of that task).
    pub distance: f32,
    /// Second-best normalised distance minus the best (∞ with one task): how clear the choice was.
    pub margin: f32,
    /// The nearest task's distance is beyond what its normal parts produce: an unknown
    /// product, or a part of it with a large defect (see [`TaskIndex::is_unknown`]).
    pub beyond: bool,
}

#[derive(Debug, Clone)]
pub struct Judgement {
    pub routing: Routing,
    pub task_name: String,
    /// Max patch score.
    pub score: f32,
    pub patch_scores: Vec<f32>,
    /// No learned product explains the image.
    pub unknown: bool,
    /// Rejected: over the task's threshold, or an unknown product.
    pub anomalous: bool,
}

pub struct Detector {
    pub tasks: Vec<TaskIndex>,
}

impl Detector {
    pub fn new(bank: &Bank) -> Result<Detector> {
        ensure!(!bank.tasks.is_empty(), "the bank has no tasks: fit one first");
        Ok(Detector {
            tasks: bank.tasks.iter().map(TaskIndex::new).collect(),
        })
    }

    pub fn route(&self, plain: &[f32]) -> Routing {
        let distances: Vec<f32> = self.tasks.iter().map(|t| t.normalised_distance(plain)).collect();
        let limits: Vec<f32> = self.tasks.iter().map(|t| t.routing.unknown_above).collect();
        decide_route(&distances, &limits)
    }

    /// The features a task scores: its prompted pass when it has a prompt, else the plain ones.
    pub fn task_features<'a>(
        &self,
        backbone: &Backbone,
        image: &Tensor,
        plain: &'a [f32],
        task: usize,
    ) -> Result<Cow<'a, [f32]>> {
        Ok(match &self.tasks[task].prompt {
            Some(prompt) => Cow::Owned(backbone.features(image.clone(), Some(prompt))?),
            None => Cow::Borrowed(plain),
        })
    }

    /// Scores an image against a given task (the oracle path) from its plain features.
    pub fn score_task(&self, backbone: &Backbone, image: &Tensor, plain: &[f32], task: usize) -> Result<Vec<f32>> {
        let features = self.task_features(backbone, image, plain, task)?;
        Ok(self.tasks[task].patch_scores(&features))
    }

    /// Plain pass → route → (prompted pass) → patch scores → decision. An unknown product is
    /// scored against its nearest task for information, and rejected.
    pub fn judge(&self, backbone: &Backbone, image: Tensor) -> Result<Judgement> {
        let plain = backbone.features(image.clone(), None)?;
        let routing = self.route(&plain);
        let patch_scores = self.score_task(backbone, &image, &plain, routing.task)?;
        let task = &self.tasks[routing.task];
        let score = image_score(&patch_scores);
        let unknown = task.is_unknown(&routing, &patch_scores);
        Ok(Judgement {
            task_name: task.name.clone(),
            unknown,
            anomalous: score > task.threshold || unknown,
            score,
            patch_scores,
            routing,
        })
    }
}

/// An image's anomaly score: its worst patch.
pub fn image_score(patch_scores: &[f32]) -> f32 {
    patch_scores.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The routing decision from each task's normalised distance and unknown-product limit: the
/// nearest task, unless even it is beyond its limit.
pub fn decide_route(distances: &[f32], limits: &[f32]) -> Routing {
    let mut order: Vec<usize> = (0..distances.len()).collect();
    order.sort_by(|a, b| distances[*a].total_cmp(&distances[*b]));
    let best = order[0];
    let margin = order.get(1).map_or(f32::INFINITY, |s| distances[*s] - distances[best]);
    Routing {
        task: best,
        distance: distances[best],
        margin,
        beyond: distances[best] > limits[best],
    }
}
