//! The decision on one image, in one place: route → score the nearest task → resolve beyond its
//! limit → decide. `ucad score`, the inspection loop and the eval protocol all call
//! [`Detector::judge`]; they differ only in where the features come from ([`Views`]).

use std::borrow::Cow;

use anyhow::Result;
use tract_core::prelude::Tensor;

use super::{image_score, Detector, Routing};
use crate::backbone::colour::{colour_of, Colour};
use crate::backbone::Backbone;

/// Where a judged frame's time goes, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Decode,
    Preprocess,
    PlainPass,
    Routing,
    PromptedPass,
    Knn,
    Decision,
}

/// The features a judgement reads: the image's plain ones (routing, and the tasks without a
/// prompt), and a task's own on demand.
pub trait Views {
    fn plain(&self) -> &[f32];
    /// The features `task` scores: its prompted pass when it has a prompt, else the plain ones.
    fn for_task(&self, detector: &Detector, task: usize) -> Result<Cow<'_, [f32]>>;
}

/// Features computed from the image as they are needed (`ucad score`, the inspection loop).
pub(crate) struct Live<'a> {
    pub backbone: &'a Backbone,
    pub image: &'a Tensor,
    pub plain: Vec<f32>,
}

impl Views for Live<'_> {
    fn plain(&self) -> &[f32] {
        &self.plain
    }

    fn for_task(&self, detector: &Detector, task: usize) -> Result<Cow<'_, [f32]>> {
        detector.task_features(self.backbone, self.image, &self.plain, task)
    }
}

/// What an image was judged as.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// The task the image was judged against: the first guess, the nearest task, or the
    /// candidate that explains it (for an unknown product: the one it is shown against).
    pub task: usize,
    /// The routing done for this image; `None` when the first guess held.
    pub routing: Option<Routing>,
    pub patch_scores: Vec<f32>,
    /// The worst patch ([`image_score`]).
    pub score: f32,
    /// The judging task's threshold.
    pub threshold: f32,
    /// No learned product explains the image.
    pub unknown: bool,
}

impl Judgement {
    fn new(detector: &Detector, task: usize, routing: Option<Routing>, patch_scores: Vec<f32>, unknown: bool) -> Self {
        Judgement {
            task,
            routing,
            score: image_score(&patch_scores),
            patch_scores,
            threshold: detector.tasks[task].threshold,
            unknown,
        }
    }

    /// The reject rule: an unknown product, or a score not within the task's threshold.
    pub fn rejected(&self) -> bool {
        // A NaN score (never made by `image_score`) would also reject: it is not within.
        let within = self.score.partial_cmp(&self.threshold).is_some_and(|o| o.is_le());
        self.unknown || !within
    }

    /// Image score relative to the threshold (0 = the decision boundary).
    pub fn relative(&self) -> f32 {
        self.score - self.threshold
    }
}

impl Detector {
    /// Judges an image from its `views`. With a `first_guess` (sticky routing), the image is
    /// scored against that task and routed only when it would be rejected, since a different
    /// product also looks like a defect. `observe` is told when each stage ends.
    pub fn judge(
        &self,
        views: &impl Views,
        colour: &Colour,
        first_guess: Option<usize>,
        observe: &mut dyn FnMut(Stage),
    ) -> Result<Judgement> {
        let mut guessed = None;
        if let Some(task) = first_guess {
            let judgement = Judgement::new(self, task, None, self.scores(views, task, observe)?, false);
            if !judgement.rejected() {
                return Ok(judgement);
            }
            guessed = Some(judgement);
        }
        let routing = self.route(views.plain(), colour)?;
        observe(Stage::Routing);
        let nearest = match guessed {
            Some(j) if j.task == routing.task => j.patch_scores,
            _ => self.scores(views, routing.task, observe)?,
        };
        let verdict = self.resolve(&routing, nearest, |task| self.scores(views, task, observe))?;
        Ok(Judgement::new(
            self,
            verdict.task,
            Some(routing),
            verdict.patch_scores,
            verdict.unknown,
        ))
    }

    /// Judges an image against a given task, without routing (the oracle task id).
    pub(crate) fn judge_as(&self, views: &impl Views, task: usize) -> Result<Judgement> {
        let patch_scores = self.scores(views, task, &mut |_| {})?;
        Ok(Judgement::new(self, task, None, patch_scores, false))
    }

    /// Plain pass, colours and [`Detector::judge`] on a preprocessed image.
    pub fn judge_image(
        &self,
        backbone: &Backbone,
        image: &Tensor,
        first_guess: Option<usize>,
        observe: &mut dyn FnMut(Stage),
    ) -> Result<Judgement> {
        let plain = backbone.features(image.clone(), None)?;
        observe(Stage::PlainPass);
        let colour = colour_of(image.try_as_plain_ram()?.as_slice::<f32>()?, &backbone.meta);
        let views = Live { backbone, image, plain };
        self.judge(&views, &colour, first_guess, observe)
    }

    fn scores(&self, views: &impl Views, task: usize, observe: &mut dyn FnMut(Stage)) -> Result<Vec<f32>> {
        let features = views.for_task(self, task)?;
        observe(Stage::PromptedPass);
        let scores = self.tasks[task].patch_scores(&features)?;
        observe(Stage::Knn);
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judgement(score: f32, unknown: bool) -> Judgement {
        Judgement {
            task: 0,
            routing: None,
            patch_scores: vec![score],
            score,
            threshold: 1.0,
            unknown,
        }
    }

    #[test]
    fn an_unknown_product_is_rejected_whatever_its_score_and_a_known_one_beyond_its_threshold() {
        assert!(!judgement(0.5, false).rejected());
        assert!(!judgement(1.0, false).rejected(), "the threshold itself passes");
        assert!(judgement(1.5, false).rejected());
        assert!(judgement(0.5, true).rejected());
        assert!(judgement(f32::NAN, false).rejected());
        assert_eq!(judgement(1.5, false).relative(), 0.5);
    }
}
