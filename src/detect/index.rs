//! One task ready to search: its key, image descriptors, projection and knowledge as
//! nearest-neighbour indexes, and the routing signals and patch scores they give.

use anyhow::{ensure, Context, Result};

use super::knn::KnnIndex;
use crate::backbone::Prompt;
use crate::bank::projection::ProjectionIndex;
use crate::bank::{RoutingStats, Task};

/// One task, ready to search.
pub struct TaskIndex {
    pub name: String,
    key: KnnIndex,
    descriptors: KnnIndex,
    projection: Option<ProjectionIndex>,
    knowledge: KnnIndex,
    prompt: Option<Prompt>,
    k: usize,
    pub threshold: f32,
    pub routing: RoutingStats,
}

impl TaskIndex {
    pub fn new(task: &Task) -> Result<TaskIndex> {
        let prompt = task.prompt.as_ref().map(|p| Prompt {
            blocks: p.blocks as usize,
            len: p.len as usize,
            dim: p.rows.dim(),
            data: p.rows.to_f32(),
        });
        let context = || format!("task {}", task.name);
        Ok(TaskIndex {
            name: task.name.clone(),
            key: KnnIndex::new(task.key.clone()).with_context(|| format!("{} key", context()))?,
            descriptors: KnnIndex::new(task.routing.image.descriptors.clone())
                .with_context(|| format!("{} image descriptors", context()))?,
            projection: task
                .projection
                .as_ref()
                .map(ProjectionIndex::new)
                .transpose()
                .with_context(context)?,
            knowledge: KnnIndex::new(task.knowledge.clone()).with_context(|| format!("{} knowledge", context()))?,
            prompt,
            k: task.k as usize,
            threshold: task.threshold,
            routing: task.routing.clone(),
        })
    }

    /// Whether the task scores its own prompted features.
    pub fn prompted(&self) -> bool {
        self.prompt.is_some()
    }

    /// The prompt the task's features are computed under, if it has one.
    pub(crate) fn prompt(&self) -> Option<&Prompt> {
        self.prompt.as_ref()
    }

    /// Dimensions of the plain patch features the task routes on.
    pub(crate) fn dim(&self) -> usize {
        self.key.dim()
    }

    /// Median over patches of the 1-NN distance to the key. UCAD takes the mean; the median
    /// ignores a defect (up to half the patches), which must not send a part elsewhere.
    pub(crate) fn key_distance(&self, plain: &[f32]) -> Result<f32> {
        let mut found = self.key.search(plain, 1, None)?;
        ensure!(!found.is_empty(), "no patch features to route");
        let middle = found.len() / 2;
        Ok(*found.select_nth_unstable_by(middle, f32::total_cmp).1)
    }

    /// Distance of an image's [`descriptor`] to the nearest of the task's fit images'.
    pub(crate) fn image_distance(&self, descriptor: &[f32]) -> Result<f32> {
        let found = self.descriptors.search(descriptor, 1, None)?;
        ensure!(found.len() == 1, "an image descriptor is one row of the feature dim");
        Ok(found[0])
    }

    /// Both routing signals in standard deviations of this task's normal images (0 = typical):
    /// comparable across products, whose raw distances are on other scales.
    pub(crate) fn routing_signals(&self, plain: &[f32], descriptor: &[f32]) -> Result<Signals> {
        let image = &self.routing.image;
        Ok(Signals {
            patch: (self.key_distance(plain)? - self.routing.mean) / self.routing.std,
            image: (self.image_distance(descriptor)? - image.mean) / image.std,
        })
    }

    /// The routing distance: [`Signals::combined`].
    pub(crate) fn routing_distance(&self, plain: &[f32], descriptor: &[f32]) -> Result<f32> {
        Ok(self.routing_signals(plain, descriptor)?.combined())
    }

    /// Share of an image's patches unlike any normal patch of this task.
    pub(crate) fn unlike_share(&self, patch_scores: &[f32]) -> f32 {
        let unlike = patch_scores.iter().filter(|s| **s > self.routing.patch_limit).count();
        unlike as f32 / patch_scores.len().max(1) as f32
    }

    /// Scores relative to this task's threshold (0 = the decision boundary), as reports, maps
    /// and audits show them.
    pub fn relative<'a>(&'a self, patch_scores: &'a [f32]) -> impl Iterator<Item = f32> + 'a {
        patch_scores.iter().map(|s| s - self.threshold)
    }

    /// Per-patch mean distance to the k nearest knowledge rows.
    pub fn patch_scores(&self, features: &[f32]) -> Result<Vec<f32>> {
        ensure!(!features.is_empty(), "no patch features to score");
        match &self.projection {
            Some(projection) => {
                let projected = projection.apply(features)?;
                self.knowledge
                    .search(&projected.coefficients, self.k, Some(&projected.residuals))
            }
            None => self.knowledge.search(features, self.k, None),
        }
    }
}

/// An image's two routing distances to one task, each normalised by the task's normal images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Signals {
    /// Median over patches of the 1-NN distance to the patch key.
    pub patch: f32,
    /// Distance of the image's descriptor to the nearest fit image's.
    pub image: f32,
}

impl Signals {
    /// The larger of the two: a task is near only when the image is near it on both. A product
    /// whose normal images spread widely on one signal (a busy, loosely spread texture is near
    /// to everything after dividing by its own spread) attracts other products only if it is
    /// as loose on the other.
    pub(crate) fn combined(&self) -> f32 {
        self.patch.max(self.image)
    }
}
