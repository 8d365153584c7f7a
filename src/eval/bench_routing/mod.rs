//! The routing stress benchmark: the shared real sets and generated products (textures and
//! objects in their own colours) learned in one sequence. After every task: routing accuracy
//! over the test images of all tasks learned so far. At the end, each task left out in turn:
//! its test images must come back as an unknown product, the others' must not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use log::info;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod report;

pub use report::{LeftOut, Misjudged, Order, RoutingBenchReport, SequenceStage};

use super::feature_cache::FeatureCache;
use super::validation_pool::{VALIDATION_SALT, VALIDATION_SHARE};
use crate::backbone::colour::{image_colours, Colour};
use crate::backbone::Backbone;
use crate::data::dataset::{load_task, TaskData};
use crate::data::folder::load_rgb;
use crate::data::synthetic::{products, SplitCounts};
use crate::detect::{decide_route, descriptor, Detector, Routing, Signals, TaskIndex};
use crate::fit::{fit_from_features, split, FitParams};

pub struct RoutingBenchOptions {
    /// Generated products added to the real sets.
    pub synthetic: usize,
    pub seed: u64,
    pub size: u32,
    pub counts: SplitCounts,
    pub fit: FitParams,
    /// Learning orders, each a seeded shuffle of the tasks; none: the real sets spread evenly
    /// through the generated products.
    pub order_seeds: Vec<u64>,
    /// Validation: the real sets are tested on a seeded [`VALIDATION_SHARE`] of their training
    /// images, which their fit does not see; their test splits are not read.
    pub validate: bool,
}

/// Test images with their task and, per task, routing signals.
struct Distances {
    owner: Vec<usize>,
    /// [image][task]
    signals: Vec<Vec<Signals>>,
    /// [image][task]: whether the image has the task's colours.
    colour_fits: Vec<Vec<bool>>,
    limits: Vec<f32>,
    /// For every image some bank routes beyond its nearest task's limit, keyed by the image,
    /// that bank's nearest task and its candidates: the task it is judged as, and whether it is
    /// unknown (the verdict needs the candidates' knowledge).
    resolved: HashMap<(usize, usize, Vec<usize>), (usize, bool)>,
}

/// `real`: a dataset root and the sets under it to spread through the generated products.
pub fn run(
    backbone: &Backbone,
    real: Option<(&Path, &[String])>,
    cache_dir: &Path,
    options: &RoutingBenchOptions,
) -> Result<RoutingBenchReport> {
    let synthetic = generated_products(cache_dir, options)?;
    let real_root = real.map(|(root, _)| root);
    let sets: Vec<(TaskData, bool)> = interleave(real.unwrap_or((Path::new(""), &[])), &synthetic)
        .into_iter()
        .map(|(dir, name)| Ok((load_task(&dir, &name)?, Some(dir.as_path()) == real_root)))
        .collect::<Result<_>>()?;
    ensure!(
        !sets.is_empty(),
        "nothing to learn: give --data and --tasks, or --synthetic with at least 1"
    );
    let cache = FeatureCache::new(cache_dir);
    let dim = backbone.meta.feature_dim();
    let mut indexes = Vec::new();
    let mut test = Vec::new();
    for (t, (set, is_real)) in sets.iter().enumerate() {
        let train = cache.features(backbone, &set.train, &format!("{}: train", set.name))?;
        let colours = image_colours(&backbone.meta, &set.train, |p| load_rgb(p))?;
        let (fit_ids, test_ids) = match options.validate && *is_real {
            true => split(set.train.len(), VALIDATION_SHARE, options.fit.seed ^ VALIDATION_SALT)?,
            false => ((0..set.train.len()).collect(), Vec::new()),
        };
        let pick = |ids: &[usize]| -> (Vec<Vec<f32>>, Vec<Colour>) {
            ids.iter().map(|&i| (train[i].clone(), colours[i])).unzip()
        };
        let (fit_features, fit_colours) = pick(&fit_ids);
        let task = fit_from_features(&set.name, &fit_features, &fit_colours, dim, &options.fit)?;
        indexes.push(TaskIndex::new(&task)?);
        let (features, colours) = match options.validate && *is_real {
            true => pick(&test_ids),
            false => {
                let paths: Vec<PathBuf> = set.test.iter().map(|i| i.image.clone()).collect();
                let features = cache.features(backbone, &paths, &format!("{}: test", set.name))?;
                (features, image_colours(&backbone.meta, &paths, |p| load_rgb(p))?)
            }
        };
        test.extend(features.into_iter().zip(colours).map(|(f, c)| (t, f, c)));
        info!("learned {} ({}/{})", set.name, t + 1, sets.len());
    }
    let detector = Detector::from_indexes(indexes)?;
    let signals = crate::parallel::map(
        &test,
        || (),
        |_, (_, f, _)| {
            let image = descriptor(f, dim);
            detector
                .tasks()
                .iter()
                .map(|task| task.routing_signals(f, &image))
                .collect::<Result<Vec<Signals>>>()
        },
    )?;
    let colour_fits = test
        .iter()
        .map(|(_, _, c)| {
            detector
                .tasks()
                .iter()
                .map(|task| task.routing.colour.fits(c))
                .collect()
        })
        .collect();
    let mut distances = Distances {
        owner: test.iter().map(|(t, _, _)| *t).collect(),
        signals,
        colour_fits,
        limits: detector.tasks().iter().map(|t| t.routing.unknown_above).collect(),
        resolved: HashMap::new(),
    };
    let orders = orders(sets.len(), &options.order_seeds);
    let beyond = beyond_routings(&distances, &orders);
    let resolved = crate::parallel::map(
        &beyond,
        || (),
        |_, (image, routing)| {
            let scores = |t: usize| detector.tasks()[t].patch_scores(&test[*image].1);
            let verdict = detector.resolve(routing, scores(routing.task)?, scores)?;
            let key = (*image, routing.task, routing.candidates.clone());
            Ok((key, (verdict.task, verdict.unknown)))
        },
    )?;
    distances.resolved.extend(resolved);
    let names: Vec<String> = sets.iter().map(|(s, _)| s.name.clone()).collect();
    Ok(report(&names, &distances, &orders, options.validate))
}

/// Learning orders as task numbers with their seeds: a seeded shuffle each, or the given order.
fn orders(count: usize, seeds: &[u64]) -> Vec<(Option<u64>, Vec<usize>)> {
    if seeds.is_empty() {
        return vec![(None, (0..count).collect())];
    }
    seeds
        .iter()
        .map(|&seed| {
            let mut order: Vec<usize> = (0..count).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
            (Some(seed), order)
        })
        .collect()
}

/// (image, routing in task numbers) wherever a bank of the report routes an image beyond its
/// nearest task's limit.
fn beyond_routings(d: &Distances, orders: &[(Option<u64>, Vec<usize>)]) -> Vec<(usize, Routing)> {
    let mut seen = std::collections::HashSet::new();
    banks(d, orders)
        .flat_map(|(bank, images)| {
            images.into_iter().filter_map(move |i| {
                let routing = route_within(d, i, &bank);
                routing.beyond.then_some((i, routing))
            })
        })
        .filter(|(i, r)| seen.insert((*i, r.task, r.candidates.clone())))
        .collect()
}

/// Every bank the report routes with, and the images it routes: each stage of each order with
/// its tasks' images, then every task left out with all images.
fn banks<'a>(
    d: &'a Distances,
    orders: &'a [(Option<u64>, Vec<usize>)],
) -> impl Iterator<Item = (Vec<usize>, Vec<usize>)> + 'a {
    let count = d.limits.len();
    let stages = orders.iter().flat_map(move |(_, order)| {
        (1..=count).map(move |t| {
            let bank = order[..t].to_vec();
            let images = (0..d.owner.len()).filter(|i| bank.contains(&d.owner[*i])).collect();
            (bank, images)
        })
    });
    let left_out = (0..count).map(move |j| ((0..count).filter(|t| *t != j).collect(), (0..d.owner.len()).collect()));
    stages.chain(left_out)
}

fn report(
    names: &[String],
    d: &Distances,
    orders: &[(Option<u64>, Vec<usize>)],
    validation: bool,
) -> RoutingBenchReport {
    let orders: Vec<Order> = orders
        .iter()
        .map(|(seed, order)| Order {
            seed: *seed,
            tasks: order.iter().map(|t| names[*t].clone()).collect(),
            stages: (1..=order.len()).map(|t| stage(names, d, &order[..t])).collect(),
        })
        .collect();
    let mut left_out = Vec::new();
    let (mut detected, mut left_images, mut false_unknown, mut known_images) = (0, 0, 0, 0);
    let all: Vec<usize> = (0..names.len()).collect();
    for j in 0..names.len() {
        let bank: Vec<usize> = (0..names.len()).filter(|t| *t != j).collect();
        let own_images: Vec<usize> = (0..d.owner.len()).filter(|i| d.owner[*i] == j).collect();
        let called = own_images.iter().filter(|i| decide(d, **i, &all).1).count();
        let (mut hit, mut own, mut wrong, mut others) = (0, 0, 0, 0);
        for image in 0..d.owner.len() {
            let unknown = decide(d, image, &bank).1;
            if d.owner[image] == j {
                own += 1;
                hit += unknown as usize;
            } else {
                others += 1;
                wrong += unknown as usize;
            }
        }
        left_out.push(LeftOut {
            task: names[j].clone(),
            unknown_when_known: ratio(called, own_images.len()),
            detected: ratio(hit, own),
            false_unknown: ratio(wrong, others),
        });
        (detected, left_images) = (detected + hit, left_images + own);
        (false_unknown, known_images) = (false_unknown + wrong, known_images + others);
    }
    let stages = || orders.iter().flat_map(|o| &o.stages);
    RoutingBenchReport {
        validation,
        worst_final_accuracy: orders
            .iter()
            .filter_map(|o| o.stages.last())
            .map(|s| s.accuracy)
            .fold(f64::INFINITY, f64::min),
        worst_task_accuracy: stages().map(|s| s.worst_accuracy).fold(f64::INFINITY, f64::min),
        orders,
        left_out,
        unknown_detected: ratio(detected, left_images),
        false_unknown: ratio(false_unknown, known_images),
    }
}

/// Image `image`'s routing among the tasks in `bank` only, in task numbers.
fn route_within(d: &Distances, image: usize, bank: &[usize]) -> Routing {
    let distances: Vec<f32> = bank.iter().map(|t| d.signals[image][*t].combined()).collect();
    let limits: Vec<f32> = bank.iter().map(|t| d.limits[*t]).collect();
    let colour_fits: Vec<bool> = bank.iter().map(|t| d.colour_fits[image][*t]).collect();
    let routing = decide_route(&distances, &limits, &colour_fits);
    Routing {
        task: bank[routing.task],
        candidates: routing.candidates.iter().map(|c| bank[*c]).collect(),
        ..routing
    }
}

/// An image's decision by `bank`: (judged task, unknown, margin).
fn decide(d: &Distances, image: usize, bank: &[usize]) -> (usize, bool, f32) {
    let routing = route_within(d, image, bank);
    let (task, unknown) = if routing.beyond {
        d.resolved[&(image, routing.task, routing.candidates)]
    } else {
        (routing.task, false)
    };
    (task, unknown, routing.margin)
}

/// The stage whose bank holds `bank`, the last of them just learned.
fn stage(names: &[String], d: &Distances, bank: &[usize]) -> SequenceStage {
    let mut right = vec![0usize; names.len()];
    let mut seen = vec![0usize; names.len()];
    let (mut unknown, mut margins) = (0, Vec::new());
    let mut wrong: HashMap<(usize, usize), (usize, usize)> = HashMap::new();
    for image in (0..d.owner.len()).filter(|i| bank.contains(&d.owner[*i])) {
        let (task, is_unknown, margin) = decide(d, image, bank);
        let owner = d.owner[image];
        seen[owner] += 1;
        right[owner] += (task == owner) as usize;
        unknown += is_unknown as usize;
        margins.push(margin);
        if task != owner {
            let count = wrong.entry((owner, task)).or_default();
            *count = (count.0 + 1, count.1 + is_unknown as usize);
        }
    }
    let mut misjudged: Vec<Misjudged> = wrong
        .into_iter()
        .map(|((owner, task), (images, unknown))| Misjudged {
            task: names[owner].clone(),
            judged_as: names[task].clone(),
            images,
            unknown,
        })
        .collect();
    misjudged.sort_by(|a, b| (b.images, &a.task, &a.judged_as).cmp(&(a.images, &b.task, &b.judged_as)));
    margins.sort_by(f32::total_cmp);
    let accuracy = |t: usize| ratio(right[t], seen[t]);
    let worst = *bank
        .iter()
        .min_by(|a, b| accuracy(**a).total_cmp(&accuracy(**b)))
        .expect("a stage has a task");
    let images: usize = seen.iter().sum();
    SequenceStage {
        learned: names[*bank.last().expect("a stage has a task")].clone(),
        tasks: bank.len(),
        test_images: images,
        accuracy: ratio(right.iter().sum(), images),
        worst_task: names[worst].clone(),
        worst_accuracy: accuracy(worst),
        unknown_rate: ratio(unknown, images),
        margin_p5: margins.get(margins.len() / 20).map_or(f64::NAN, |m| *m as f64),
        misjudged,
    }
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        f64::NAN
    } else {
        part as f64 / whole as f64
    }
}

/// The generated products, written once under the cache folder (their features are cached by
/// file, so the same files are reused).
fn generated_products(cache_dir: &Path, options: &RoutingBenchOptions) -> Result<(PathBuf, Vec<String>)> {
    let c = options.counts;
    let dir = cache_dir.join(format!(
        "synthetic-s{}-{}px-{}-{}-{}",
        options.seed, options.size, c.train, c.test_good, c.test_defective
    ));
    let all = products(options.synthetic, options.seed);
    for product in &all {
        if !dir.join(&product.name).is_dir() {
            let partial = dir.join(format!(".{}.partial", product.name));
            let _ = std::fs::remove_dir_all(&partial);
            product.write_mvtec(&partial, options.size, c)?;
            std::fs::rename(partial.join(&product.name), dir.join(&product.name))
                .with_context(|| format!("cannot move generated {} into {}", product.name, dir.display()))?;
            std::fs::remove_dir_all(&partial).ok();
        }
    }
    Ok((dir, all.into_iter().map(|p| p.name).collect()))
}

/// Real sets spread evenly through the generated ones: (dataset root, task name) in learning order.
fn interleave((root, real): (&Path, &[String]), synthetic: &(PathBuf, Vec<String>)) -> Vec<(PathBuf, String)> {
    let (dir, names) = synthetic;
    let every = names.len().div_ceil(real.len().max(1)).max(1);
    let mut order = Vec::new();
    let mut generated = names.iter();
    for r in real {
        order.push((root.to_path_buf(), r.clone()));
        order.extend(generated.by_ref().take(every).map(|n| (dir.clone(), n.clone())));
    }
    order.extend(generated.map(|n| (dir.clone(), n.clone())));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_and_left_out_tasks_are_counted_from_the_distances() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        // Image rows: normalised distance to tasks a, b, c; every task's limit is 2.
        let patch = |row: [f32; 3]| {
            row.map(|patch| Signals {
                patch,
                image: f32::NEG_INFINITY,
            })
            .to_vec()
        };
        let mut d = Distances {
            owner: vec![0, 0, 1, 1, 2],
            signals: vec![
                patch([1.0, 5.0, 5.0]),
                patch([1.2, 1.1, 5.0]), // an a-part b explains better: misrouted once b is learned
                patch([5.0, 0.9, 5.0]),
                patch([5.0, 3.0, 5.0]), // a b-part beyond b's limit: unknown
                patch([1.9, 5.0, 1.0]), // a c-part a would explain when c is left out
            ],
            colour_fits: vec![vec![true; 3]; 5],
            limits: vec![2.0; 3],
            resolved: HashMap::new(),
        };
        // The knowledge finds nothing better than the nearest task, and calls the image unknown.
        let mut orders = orders(3, &[]);
        orders.push((Some(9), vec![2, 0, 1]));
        let beyond = beyond_routings(&d, &orders);
        d.resolved.extend(
            beyond
                .into_iter()
                .map(|(image, r)| ((image, r.task, r.candidates), (r.task, true))),
        );
        let r = report(&names, &d, &orders, false);
        let stages = &r.orders[0].stages;
        assert_eq!(stages[0].accuracy, 1.0);
        let after_b = &stages[1];
        // The b-part nothing explains is nearest to b (right) but unknown.
        assert_eq!((after_b.accuracy, after_b.unknown_rate), (0.75, 0.25));
        assert_eq!(after_b.worst_accuracy, 0.5);
        let misjudged: Vec<_> = after_b
            .misjudged
            .iter()
            .map(|m| (m.task.as_str(), m.judged_as.as_str(), m.images, m.unknown))
            .collect();
        assert_eq!(misjudged, [("a", "b", 1, 0)]);
        assert_eq!(stages[2].accuracy, 4.0 / 5.0);
        // In the order c, a, b: c alone is right; with a, the a-part nearer b is a's; then as above.
        let shuffled = &r.orders[1].stages;
        let learned: Vec<&str> = shuffled.iter().map(|s| s.learned.as_str()).collect();
        assert_eq!(learned, ["c", "a", "b"]);
        assert_eq!((shuffled[0].test_images, shuffled[0].accuracy), (1, 1.0));
        assert_eq!((shuffled[1].test_images, shuffled[1].accuracy), (3, 1.0));
        assert_eq!(shuffled[2].accuracy, stages[2].accuracy);
        assert_eq!((r.worst_final_accuracy, r.worst_task_accuracy), (0.8, 0.5));
        let detected: Vec<f64> = r.left_out.iter().map(|l| l.detected).collect();
        // Without a: its first image is unknown, the second goes to b. Without b: both unknown.
        // Without c: its image goes to a.
        assert_eq!(detected, [0.5, 1.0, 0.0]);
        assert_eq!(r.unknown_detected, 3.0 / 5.0);
    }
}
