//! How `fit` and `eval` learn a task in a build without the `train` feature: from plain
//! features only (learner.rs has the prompt flags).

use anyhow::Result;
use ucad::backbone::Backbone;
use ucad::fit::learner::{PlainLearner, TaskLearner};

use super::Context;

#[derive(clap::Args)]
pub struct LearnerArgs {}

impl LearnerArgs {
    pub fn learner(&self, _: &Context, _: &Backbone, _: u64) -> Result<Box<dyn TaskLearner>> {
        Ok(Box::new(PlainLearner))
    }
}
