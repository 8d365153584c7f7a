//! How the continual protocol learns a task: from its plain features alone, or with a learned
//! prompt (the train module, feature `train`).

use anyhow::Result;
use serde::Serialize;

use super::{fit_from_features, FitParams};
use crate::backbone::colour::Colour;
use crate::backbone::Backbone;
use crate::bank::Task;
use crate::data::dataset::TaskData;

/// A learned task, with what its own test images are scored on when that is not their plain
/// features (their features under the task's prompt).
pub struct Learned {
    pub task: Task,
    pub test_knowledge: Option<Vec<Vec<f32>>>,
    pub prompt: Option<PromptSummary>,
}

/// How a task's prompt was learned.
#[derive(Debug, Clone, Serialize)]
pub struct PromptSummary {
    pub task: String,
    /// The SCL loss and the segment source.
    pub loss: String,
    pub masks: String,
    pub train_images: usize,
    pub held_images: usize,
    pub epochs: usize,
    /// The epoch kept: lowest SCL loss on the held-out normal training images.
    pub best_epoch: usize,
    pub initial_held_loss: f64,
    pub best_held_loss: f64,
    pub train_s: f64,
}

pub trait TaskLearner {
    /// Learns `data`'s task from its training images, whose plain features and colours are
    /// `plain` and `colours`.
    fn learn(
        &self,
        backbone: &Backbone,
        data: &TaskData,
        plain: &[Vec<f32>],
        colours: &[Colour],
        params: &FitParams,
    ) -> Result<Learned>;
}

/// UCAD without prompts: knowledge from the plain features.
pub struct PlainLearner;

impl TaskLearner for PlainLearner {
    fn learn(
        &self,
        backbone: &Backbone,
        data: &TaskData,
        plain: &[Vec<f32>],
        colours: &[Colour],
        params: &FitParams,
    ) -> Result<Learned> {
        Ok(Learned {
            task: fit_from_features(&data.name, plain, colours, backbone.meta.feature_dim(), params)?,
            test_knowledge: None,
            prompt: None,
        })
    }
}
