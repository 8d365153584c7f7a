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
use crate::bank::{Bank, Task};
use knn::KnnIndex;

/// One task, ready to search.
pub struct TaskIndex {
    pub name: String,
    key: KnnIndex,
    knowledge: KnnIndex,
    prompt: Option<Prompt>,
    k: usize,
    pub threshold: f32,
}

impl TaskIndex {
    pub fn new(task: &Task) -> TaskIndex {
        let dim = task.key.dim();
        let prompt = task.prompt.as_ref().map(|p| Prompt {
            blocks: p.blocks as usize,
            len: p.len as usize,
            dim: p.rows.dim(),
            data: p.rows.to_f32(),
        });
        TaskIndex {
            name: task.name.clone(),
            key: KnnIndex::new(task.key.to_f32(), dim),
            knowledge: KnnIndex::new(task.knowledge.to_f32(), dim),
            prompt,
            k: task.k as usize,
            threshold: task.threshold,
        }
    }

    /// Mean over patches of the 1-NN distance to the key: UCAD's routing distance.
    pub fn key_distance(&self, plain: &[f32]) -> f32 {
        let found = self.key.search(plain, 1);
        found.iter().map(|(_, d)| d).sum::<f32>() / found.len() as f32
    }

    /// Scores relative to this task's threshold (0 = the decision boundary), as reports, maps
    /// and audits show them.
    pub fn relative<'a>(&'a self, patch_scores: &'a [f32]) -> impl Iterator<Item = f32> + 'a {
        patch_scores.iter().map(|s| s - self.threshold)
    }

    /// Per-patch mean distance to the k nearest knowledge rows.
    pub fn patch_scores(&self, features: &[f32]) -> Vec<f32> {
        self.knowledge
            .search(features, self.k)
            .into_iter()
            .map(|(_, d)| d)
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub task: usize,
    pub distance: f32,
    /// Second-best distance minus the best (∞ with one task): how clear the choice was.
    pub margin: f32,
}

#[derive(Debug, Clone)]
pub struct Judgement {
    pub routing: Routing,
    pub task_name: String,
    /// Max patch score.
    pub score: f32,
    pub patch_scores: Vec<f32>,
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
        let distances: Vec<f32> = self.tasks.iter().map(|t| t.key_distance(plain)).collect();
        routing_from(&distances)
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

    /// Plain pass → route → (prompted pass) → patch scores → decision.
    pub fn judge(&self, backbone: &Backbone, image: Tensor) -> Result<Judgement> {
        let plain = backbone.features(image.clone(), None)?;
        let routing = self.route(&plain);
        let patch_scores = self.score_task(backbone, &image, &plain, routing.task)?;
        let task = &self.tasks[routing.task];
        let score = image_score(&patch_scores);
        Ok(Judgement {
            task_name: task.name.clone(),
            anomalous: score > task.threshold,
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

fn routing_from(distances: &[f32]) -> Routing {
    let mut order: Vec<usize> = (0..distances.len()).collect();
    order.sort_by(|a, b| distances[*a].total_cmp(&distances[*b]));
    let best = order[0];
    let margin = order.get(1).map_or(f32::INFINITY, |s| distances[*s] - distances[best]);
    Routing {
        task: best,
        distance: distances[best],
        margin,
    }
}
