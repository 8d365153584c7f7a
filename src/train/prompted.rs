//! Fitting a task with a learned prompt: routing keeps the plain features; the prompt is learned
//! on the memory images and chosen on the held-out ones (the same split the fit calibrates on);
//! knowledge and calibration then come from features under that prompt, computed by the
//! exported backbone under tract, as on the device.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::DType;
use log::info;

use super::masks::Segmenter;
use super::{learn_prompt, PromptedVit, Prompting, Recipe, Trained};
use crate::backbone::colour::Colour;
use crate::backbone::extract::extract_features_with;
use crate::backbone::{Backbone, VitWeights};
use crate::bank::{StoredPrompt, Task};
use crate::data::dataset::TaskData;
use crate::data::folder::load_rgb;
use crate::fit::learner::{Learned, PromptSummary, TaskLearner};
use crate::fit::{fit_from_views, split, FitParams, TaskFeatures};

pub struct PromptLearner {
    vit: PromptedVit,
    segmenter: Box<dyn Segmenter>,
    masks: String,
    recipe: Recipe,
}

/// A task fitted with a prompt, and how the prompt was learned.
pub struct PromptedFit {
    pub task: Task,
    pub trained: Trained,
}

impl PromptLearner {
    pub fn new(backbone: &Backbone, prompting: Prompting) -> Result<PromptLearner> {
        let weights = VitWeights::load_for(&prompting.weights, backbone.meta.arch)?;
        let vit = PromptedVit::new(&weights, &backbone.meta, DType::F32)
            .with_context(|| format!("{} and {}", prompting.weights.display(), backbone.path.display()))?;
        Ok(PromptLearner {
            vit,
            segmenter: prompting.masks.segmenter()?,
            masks: prompting.masks.to_string(),
            recipe: prompting.recipe,
        })
    }

    /// Learns task `name` from its normal images, whose plain features and colours are `plain`
    /// and `colours`.
    pub fn fit(
        &self,
        backbone: &Backbone,
        name: &str,
        images: &[PathBuf],
        (plain, colours): (&[Vec<f32>], &[Colour]),
        params: &FitParams,
    ) -> Result<PromptedFit> {
        let (memory, held) = split(images.len(), params.holdout, params.seed)?;
        let pick = |ids: &[usize]| -> Vec<PathBuf> { ids.iter().map(|&i| images[i].clone()).collect() };
        info!(
            "{name}: learning a prompt ({:?} SCL, {} epochs)",
            self.recipe.loss, self.recipe.epochs
        );
        let trained = learn_prompt(&self.vit, &*self.segmenter, &pick(&memory), &pick(&held), &self.recipe)?;
        info!(
            "{name}: prompt learned in {:.1} s; epoch {} kept (held-out loss {:.4} → {:.4})",
            trained.seconds,
            trained.best_epoch,
            trained.initial_held,
            trained.best_held()
        );
        let label = format!("{name}: prompted features");
        let prompted = extract_features_with(backbone, images, &label, Some(&trained.prompt), |p| load_rgb(p))?;
        let views = TaskFeatures {
            plain,
            knowledge: &prompted,
            colours,
        };
        let prompt = StoredPrompt::new(&trained.prompt);
        let within_budget = FitParams {
            task_budget_bytes: params.task_budget_bytes.saturating_sub(prompt.rows.bytes()),
            ..params.clone()
        };
        let mut task = fit_from_views(name, views, backbone.meta.feature_dim(), &within_budget)?;
        task.prompt = Some(prompt);
        Ok(PromptedFit { task, trained })
    }
}

impl TaskLearner for PromptLearner {
    fn learn(
        &self,
        backbone: &Backbone,
        data: &TaskData,
        plain: &[Vec<f32>],
        colours: &[Colour],
        params: &FitParams,
    ) -> Result<Learned> {
        let fit = self.fit(backbone, &data.name, &data.train, (plain, colours), params)?;
        let tests: Vec<PathBuf> = data.test.iter().map(|t| t.image.clone()).collect();
        let label = format!("{}: prompted test features", data.name);
        let test_knowledge =
            extract_features_with(backbone, &tests, &label, Some(&fit.trained.prompt), |p| load_rgb(p))?;
        let t = &fit.trained;
        let summary = PromptSummary {
            task: data.name.clone(),
            loss: format!("{:?}", self.recipe.loss).to_lowercase(),
            masks: self.masks.clone(),
            train_images: t.train_images,
            held_images: t.held_images,
            epochs: t.epochs.len(),
            best_epoch: t.best_epoch,
            initial_held_loss: t.initial_held,
            best_held_loss: t.best_held(),
            train_s: t.seconds,
        };
        Ok(Learned {
            task: fit.task,
            test_knowledge: Some(test_knowledge),
            prompt: Some(summary),
        })
    }
}
