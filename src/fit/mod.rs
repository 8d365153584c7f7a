//! Learning one task from normal images only: key and knowledge coresets (the knowledge stored
//! compactly: a principal subspace of the task's features, int8 rows, within a byte budget),
//! and, from held-out normal training images, the routing distance statistics and
//! a threshold calibrated for a target false-reject rate.

mod calibrate;
pub mod expected;
pub mod learner;
mod params;
pub mod report;

pub use params::FitParams;

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use log::info;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::backbone::colour::{image_colours, Colour};
use crate::backbone::extract::extract_features;
use crate::backbone::Backbone;
use crate::bank::coreset::{gather_rows, greedy_coreset};
use crate::bank::projection::ProjectionIndex;
use crate::bank::{ImageStats, Precision, Projection, Rows, Task};
use crate::data::folder::load_rgb;
use crate::detect::descriptor;
use calibrate::{calibrate, normal_stats};

/// Splits image indices into (memory, held-out), deterministically for the seed.
pub fn split(count: usize, holdout: f32, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    ensure!((0.0..1.0).contains(&holdout), "holdout fraction must be in [0, 1)");
    let mut shuffled: Vec<usize> = (0..count).collect();
    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let held = ((count as f32 * holdout).round() as usize).max(1);
    ensure!(
        count > held,
        "{count} training images are too few: at least 2 are needed (one is held out)"
    );
    let memory = shuffled.split_off(held);
    Ok((memory, shuffled))
}

/// Learns a task from the normal images in `images`.
pub fn fit_task(backbone: &Backbone, name: &str, images: &[PathBuf], params: &FitParams) -> Result<Task> {
    let features = extract_features(backbone, images, &format!("{name}: features"))?;
    let colours = image_colours(&backbone.meta, images, |p| load_rgb(p))?;
    fit_from_features(name, &features, &colours, backbone.meta.feature_dim(), params)
}

/// Learns a task from the plain features of its normal training images (one row-major [N, F]
/// vector per image, rows of `dim`) and their colours.
pub(crate) fn fit_from_features(
    name: &str,
    features: &[Vec<f32>],
    colours: &[Colour],
    dim: usize,
    params: &FitParams,
) -> Result<Task> {
    fit_from_views(name, TaskFeatures::plain(features, colours), dim, params)
}

/// Learns a task from both views of its normal training images.
pub(crate) fn fit_from_views(name: &str, features: TaskFeatures, dim: usize, params: &FitParams) -> Result<Task> {
    let fitting = Fitting::new(name, features, dim, params)?;
    let projection = fitting.projection(params);
    let count = fitting.knowledge_count(params, projection.as_ref())?;
    let task = fitting.task(params, projection, &fitting.coreset(count))?;
    info!(
        "{name}: {} memory / {} held-out images, {} key and {} knowledge rows of {} dims, {} bytes, \
         threshold {:.4}, routing distance {:.4} ± {:.4}, image distance {:.4} ± {:.4} ({} descriptors)",
        fitting.memory_images,
        fitting.held.len(),
        task.key.len(),
        task.knowledge.len(),
        task.knowledge_dim(),
        task.bytes(),
        task.threshold,
        task.routing.mean,
        task.routing.std,
        task.routing.image.mean,
        task.routing.image.std,
        task.routing.image.descriptors.len()
    );
    Ok(task)
}

/// A task's training images as routing sees them (plain) and as its knowledge is made of
/// (under the task's prompt; the plain ones when it has none), one row-major [N, F] vector per
/// image.
#[derive(Clone, Copy)]
pub(crate) struct TaskFeatures<'a> {
    pub plain: &'a [Vec<f32>],
    pub knowledge: &'a [Vec<f32>],
    pub colours: &'a [Colour],
}

impl<'a> TaskFeatures<'a> {
    pub fn plain(features: &'a [Vec<f32>], colours: &'a [Colour]) -> TaskFeatures<'a> {
        TaskFeatures {
            plain: features,
            knowledge: features,
            colours,
        }
    }
}

/// A task's training features split into memory and held-out images: the steps of a fit, so
/// that a sweep over storage settings can reuse what they share.
pub(crate) struct Fitting<'a> {
    name: String,
    dim: usize,
    features: TaskFeatures<'a>,
    /// Knowledge-view patch rows of the memory images, row-major [n, dim].
    memory: Vec<f32>,
    memory_images: usize,
    held: Vec<usize>,
    /// The routing key's rows (full precision).
    key: Vec<f32>,
    /// Descriptors of the memory images, row-major [memory images, dim].
    descriptors: Vec<f32>,
    /// The memory images whose descriptors are stored.
    described: Vec<usize>,
    seed: u64,
}

impl<'a> Fitting<'a> {
    pub fn new(name: &str, features: TaskFeatures<'a>, dim: usize, params: &FitParams) -> Result<Fitting<'a>> {
        params.check()?;
        let views = [features.plain, features.knowledge];
        ensure!(
            views
                .iter()
                .all(|v| v.iter().all(|f| !f.is_empty() && f.len() % dim == 0)),
            "features are not rows of {dim}"
        );
        ensure!(
            features.plain.len() == features.knowledge.len() && features.plain.len() == features.colours.len(),
            "{} plain and {} knowledge feature sets for {} colours",
            features.plain.len(),
            features.knowledge.len(),
            features.colours.len()
        );
        let (memory_ids, held) = split(features.plain.len(), params.holdout, params.seed)?;
        let rows =
            |view: &[Vec<f32>]| -> Vec<f32> { memory_ids.iter().flat_map(|&i| view[i].iter().copied()).collect() };
        let plain_memory = rows(features.plain);
        let key = gather_rows(
            &plain_memory,
            dim,
            &greedy_coreset(&plain_memory, dim, params.key_rows, params.seed),
        );
        let memory = rows(features.knowledge);
        let descriptors: Vec<f32> = memory_ids
            .iter()
            .flat_map(|&i| descriptor(&features.plain[i], dim))
            .collect();
        let described = greedy_coreset(&descriptors, dim, DESCRIPTOR_ROWS, params.seed + 2);
        Ok(Fitting {
            name: name.to_string(),
            dim,
            features,
            memory,
            memory_images: memory_ids.len(),
            held,
            key,
            descriptors,
            described,
            seed: params.seed,
        })
    }

    pub(crate) fn memory_rows(&self) -> usize {
        self.memory.len() / self.dim
    }

    /// The principal subspace knowledge rows are stored in, when fewer dims are asked for.
    pub fn projection(&self, params: &FitParams) -> Option<Projection> {
        (params.knowledge_dims > 0 && params.knowledge_dims < self.dim).then(|| {
            let components = match params.precision {
                Precision::F32 => Precision::F32,
                Precision::F16 | Precision::I8 => Precision::F16,
            };
            Projection::fit(&self.memory, self.dim, params.knowledge_dims, components, self.seed)
        })
    }

    /// Knowledge rows: the asked-for fraction of the memory patches, cut to the budget.
    pub(crate) fn knowledge_count(&self, params: &FitParams, projection: Option<&Projection>) -> Result<usize> {
        let dims = projection.map_or(self.dim, Projection::out_dim);
        let key_bytes = params.precision.bytes(params.key_rows, self.dim);
        let descriptor_bytes = DESCRIPTOR_PRECISION.bytes(self.described.len(), self.dim);
        let fixed = key_bytes + descriptor_bytes + projection.map_or(0, Projection::bytes);
        let room = knowledge_room(params, fixed, dims).with_context(|| format!("task {}", self.name))?;
        let wanted = (self.memory_rows() as f64 * params.knowledge_fraction as f64).ceil() as usize;
        Ok(wanted.min(room))
    }

    /// Memory rows chosen greedily (k-center); the first n of a larger choice are the choice of n.
    pub fn coreset(&self, count: usize) -> Vec<usize> {
        greedy_coreset(&self.memory, self.dim, count, self.seed + 1)
    }

    /// The task with the memory rows `chosen` as knowledge, stored as `params` say (the key as
    /// chosen at `new`), calibrated on the held-out images.
    pub fn task(&self, params: &FitParams, projection: Option<Projection>, chosen: &[usize]) -> Result<Task> {
        let rows = gather_rows(&self.memory, self.dim, chosen);
        let (knowledge, knowledge_dim) = match &projection {
            Some(p) => (ProjectionIndex::new(p)?.apply(&rows)?.coefficients, p.out_dim()),
            None => (rows, self.dim),
        };
        let knowledge = Rows::new(knowledge_dim, knowledge, params.precision);
        let k = params.k.min(knowledge.len()) as u32;
        let key = Rows::new(self.dim, self.key.clone(), params.precision);
        let mut task = Task::uncalibrated(&self.name, key, projection, knowledge, k);
        let held = |view: &'a [Vec<f32>]| -> Vec<&'a [f32]> { self.held.iter().map(|&i| &view[i][..]).collect() };
        calibrate(
            &mut task,
            &held(self.features.plain),
            &held(self.features.knowledge),
            self.features.colours,
            self.image_stats(),
            params.target_false_reject,
        )?;
        Ok(task)
    }

    /// The stored descriptors and the distance of normal images' descriptors to the nearest
    /// of them: held-out images', and each memory image's to the stored ones but its own (a
    /// product with few images has few held out).
    fn image_stats(&self) -> ImageStats {
        let stored = Rows::new(
            self.dim,
            gather_rows(&self.descriptors, self.dim, &self.described),
            DESCRIPTOR_PRECISION,
        );
        let rows = stored.to_f32();
        let nearest = |query: &[f32], except: Option<usize>| {
            rows.chunks(self.dim)
                .zip(&self.described)
                .filter(|(_, id)| Some(**id) != except)
                .map(|(row, _)| row.iter().zip(query).map(|(a, b)| (a - b).powi(2)).sum::<f32>().sqrt())
                .fold(f32::INFINITY, f32::min)
        };
        let held = self
            .held
            .iter()
            .map(|&i| nearest(&descriptor(&self.features.plain[i], self.dim), None));
        let memory = self
            .descriptors
            .chunks(self.dim)
            .enumerate()
            .map(|(i, d)| nearest(d, Some(i)));
        let distances: Vec<f32> = held.chain(memory).filter(|d| d.is_finite()).collect();
        let stats = normal_stats(&distances, 0.0);
        ImageStats {
            descriptors: stored,
            mean: stats.mean,
            std: stats.std.max(IMAGE_SPREAD_FLOOR * stats.mean).max(f32::MIN_POSITIVE),
        }
    }
}

/// Most image descriptors a task stores: a k-center choice among its memory images.
const DESCRIPTOR_ROWS: usize = 64;
const DESCRIPTOR_PRECISION: Precision = Precision::F16;
/// The image distance's spread is at least this share of its mean: the few held-out images of a
/// product that barely varies would otherwise make every other normal image of it look far
/// (chosen on validation runs, docs/LIMITS.md).
const IMAGE_SPREAD_FLOOR: f32 = 0.2;

/// How many knowledge rows of `dims` fit the budget beside `fixed_bytes`.
fn knowledge_room(params: &FitParams, fixed_bytes: usize, dims: usize) -> Result<usize> {
    let once = params.precision.bytes(0, dims);
    let per_row = params.precision.bytes(1, dims) - once;
    let left = params.task_budget_bytes.saturating_sub(fixed_bytes + once);
    ensure!(
        left >= per_row,
        "{} bytes leave no room for knowledge rows beside {fixed_bytes} bytes of key and projection",
        params.task_budget_bytes
    );
    Ok(left / per_row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::TaskIndex;

    fn colours(images: usize) -> Vec<Colour> {
        vec![[120.0; crate::backbone::colour::COLOUR_DIMS]; images]
    }

    /// `images` images of 16 patches of dim 32 around a product-specific centre.
    fn product_features(centre: f32, images: usize, seed: u64) -> Vec<Vec<f32>> {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..images)
            .map(|_| {
                (0..16 * 32)
                    .map(|i| centre * ((i % 7) as f32) + rng.random_range(-1.0..1.0))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_compact_task_stays_within_its_budget_and_a_too_small_budget_is_refused() {
        let features = product_features(0.0, 30, 1);
        let params = FitParams {
            key_rows: 8,
            knowledge_fraction: 1.0,
            knowledge_dims: 8,
            task_budget_bytes: 4_000,
            ..FitParams::default()
        };
        let task = fit_from_features("widget", &features, &colours(30), 32, &params).unwrap();
        assert!(task.bytes() <= 4_000, "{} bytes", task.bytes());
        assert_eq!(task.knowledge_dim(), 8);
        // Budget, not the fraction, limits the rows: 24 memory images × 16 patches are more.
        assert!(task.knowledge.len() < 24 * 16 && task.knowledge.len() > 100);
        let tiny = FitParams {
            task_budget_bytes: 500,
            ..params
        };
        let err = fit_from_features("widget", &features, &colours(30), 32, &tiny).unwrap_err();
        assert!(format!("{err:#}").contains("widget"), "{err:#}");
    }

    #[test]
    fn routing_is_normalised_by_the_task_and_a_foreign_product_is_beyond_its_limit() {
        let params = FitParams {
            key_rows: 16,
            knowledge_dims: 8,
            ..FitParams::default()
        };
        let task = fit_from_features("near", &product_features(0.0, 40, 2), &colours(40), 32, &params).unwrap();
        let index = TaskIndex::new(&task).unwrap();
        let own = product_features(0.0, 20, 3);
        let distance = |f: &Vec<f32>| index.routing_distance(f, &descriptor(f, 32)).unwrap();
        let typical: Vec<f32> = own.iter().map(distance).collect();
        assert!(typical.iter().all(|d| *d < task.routing.unknown_above), "{typical:?}");
        let median = calibrate::empirical_quantile(&typical, 0.5);
        assert!(median.abs() < 1.0, "{median}");
        let foreign = product_features(2.0, 5, 4);
        assert!(foreign.iter().all(|f| distance(f) > task.routing.unknown_above));
    }

    #[test]
    fn parameters_out_of_range_are_refused_naming_their_flag() {
        let default = FitParams::default;
        let cases = [
            (
                FitParams {
                    target_false_reject: f32::NAN,
                    ..default()
                },
                "--false-reject",
            ),
            (
                FitParams {
                    target_false_reject: 0.0,
                    ..default()
                },
                "--false-reject",
            ),
            (
                FitParams {
                    target_false_reject: 0.7,
                    ..default()
                },
                "--false-reject",
            ),
            (
                FitParams {
                    knowledge_fraction: -0.1,
                    ..default()
                },
                "--knowledge-fraction",
            ),
            (
                FitParams {
                    knowledge_fraction: f32::INFINITY,
                    ..default()
                },
                "--knowledge-fraction",
            ),
            (
                FitParams {
                    holdout: f32::NAN,
                    ..default()
                },
                "--holdout",
            ),
            (
                FitParams {
                    key_rows: 0,
                    ..default()
                },
                "--key-rows",
            ),
            (FitParams { k: 0, ..default() }, "--k "),
            (
                FitParams {
                    task_budget_bytes: 0,
                    ..default()
                },
                "--task-budget-kb",
            ),
        ];
        for (params, flag) in cases {
            let err = params.check().unwrap_err().to_string();
            assert!(err.starts_with(flag.trim_end()) && err.contains(flag), "{err}");
            let features = product_features(0.0, 4, 1);
            assert!(fit_from_features("t", &features, &colours(4), 32, &params).is_err());
        }
        default().check().unwrap();
    }
}
