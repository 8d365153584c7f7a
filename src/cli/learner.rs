//! How `fit` and `eval` learn a task: with a learned prompt when asked (built with the `train`
//! feature; learner_plain.rs stands in without it).

use anyhow::Result;
use ucad::backbone::Backbone;
use ucad::fit::learner::{PlainLearner, TaskLearner};
use ucad::train::masks::MaskSource;
use ucad::train::prompted::PromptLearner;
use ucad::train::scl::SclLoss;
use ucad::train::{Prompting, Recipe};

use super::Context;

#[derive(clap::Args)]
pub struct LearnerArgs {
    /// Epochs of prompt learning (SCL); 0 fits without a prompt.
    #[arg(long, default_value_t = 0)]
    prompt_epochs: usize,
    /// Segments for SCL: `superpixel`, a folder of label-map PNGs, or `sam:WEIGHTS.safetensors`.
    #[arg(long, default_value = "superpixel")]
    masks: MaskSource,
    /// SCL loss: the paper code's, or supervised contrastive (InfoNCE).
    #[arg(long, value_enum, default_value = "paper")]
    scl: SclLoss,
    /// Adam's learning rate. The paper's 5e-4 is for about 650 steps; 0.02 gives Adam the same
    /// travel in the tens of steps a CPU budget allows.
    #[arg(long, default_value_t = 0.02)]
    prompt_lr: f64,
    /// Most training images a prompt learns from, and twice the most held-out images that
    /// choose its epoch (seeded subsets; 0: all).
    #[arg(long, default_value_t = 32)]
    prompt_images: usize,
}

impl LearnerArgs {
    /// The prompt learner when prompts are asked for, else the plain one.
    pub fn learner(&self, ctx: &Context, backbone: &Backbone, seed: u64) -> Result<Box<dyn TaskLearner>> {
        if self.prompt_epochs == 0 {
            return Ok(Box::new(PlainLearner));
        }
        let prompting = Prompting {
            recipe: Recipe::new(self.prompt_epochs, self.scl, self.prompt_lr, self.prompt_images, seed),
            masks: self.masks.clone(),
            weights: ctx.cache.weights(backbone.meta.arch),
        };
        Ok(Box::new(PromptLearner::new(backbone, prompting)?))
    }
}
