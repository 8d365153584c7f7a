//! What a bank must mean before anything judges with it. Intrinsic ([`Bank::validate`], part of
//! every load): every number finite and in the range its use needs, every row count and
//! dimension consistent with the declared shapes. For a backbone ([`Bank::check_backbone`]): the
//! same file, feature dim, patch count, prompt shape and arithmetic. A bank that passes both cannot make the
//! detector panic, read out of bounds or pass a part on a NaN.

use super::colour::{ColourStats, SPREAD_FLOOR};
use super::contents::{Bank, BankError, ImageStats, NormalStats, RoutingStats, StoredPrompt, Task};
use super::rows::Rows;
use crate::backbone::BackboneSpec;

/// Largest magnitude a stored feature value (row, int8 scale × 128, projection mean, prompt) may
/// have: far beyond any ViT activation (tens to a few thousand), and small enough that every
/// squared distance the detector computes stays finite in f32 whatever the feature dim.
pub(crate) const VALUE_LIMIT: f32 = 4_294_967_296.0; // 2^32

/// Highest bank version a bank may carry: room for a new version every second for 285 million
/// years, and far from u64::MAX, where a signed bank would leave no newer version to install
/// (every device that took it would refuse all updates after it).
pub(crate) const MAX_VERSION: u64 = 1 << 53;
/// The longest task (product) name: it names the product in logs, `/status` and metrics.
pub(crate) const MAX_TASK_NAME: usize = 200;

/// Projection components are orthonormal rows: no value beyond 1 (with room for rounding in f16
/// and int8 storage).
const COMPONENT_LIMIT: f32 = 1.01;

/// Colour quartiles and chroma differences lie in −255..=255.
const COLOUR_RANGE: f32 = 255.0;

/// A field of a bank and what is wrong with it.
#[derive(Debug)]
pub(crate) struct Problem {
    pub field: String,
    pub problem: String,
}

fn problem(field: impl Into<String>, problem: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        problem: problem.into(),
    }
}

impl Problem {
    pub(crate) fn into_error(self, origin: &str) -> BankError {
        BankError::Invalid {
            path: origin.to_string(),
            field: self.field,
            problem: self.problem,
        }
    }
}

impl Bank {
    /// The intrinsic check: every load runs it. `origin` names the bank in the error.
    pub fn validate(&self, origin: &str) -> Result<(), BankError> {
        self.check().map_err(|p| p.into_error(origin))
    }

    fn check(&self) -> Result<(), Problem> {
        if self.backbone_sha256.len() != 64 || !self.backbone_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(problem("backbone_sha256", "is not 64 hex digits"));
        }
        if self.version > MAX_VERSION {
            return Err(problem(
                "version",
                format!("is {}, beyond the highest version {MAX_VERSION}", self.version),
            ));
        }
        at_least("feature_dim", self.feature_dim as f32, 1.0)?;
        at_least("patches", self.patches as f32, 1.0)?;
        if self.tasks.is_empty() {
            return Err(problem("tasks", "are none: fit one first"));
        }
        for (i, task) in self.tasks.iter().enumerate() {
            if self.tasks[..i].iter().any(|t| t.name == task.name) {
                return Err(problem(format!("task {:?}", task.name), "appears twice"));
            }
            check_task(task, self.feature_dim as usize)?;
        }
        Ok(())
    }

    /// Whether the bank was fitted on this backbone and fits its shapes.
    pub fn check_backbone(&self, spec: &BackboneSpec, origin: &str) -> Result<(), BankError> {
        if self.backbone_sha256 != spec.sha256 {
            return Err(BankError::WrongBackbone {
                path: origin.to_string(),
                bank: short(&self.backbone_sha256),
                backbone: short(&spec.sha256),
            });
        }
        let mismatch = |field: String, bank: usize, backbone: usize| {
            Err(BankError::BackboneMismatch {
                path: origin.to_string(),
                field,
                bank,
                backbone,
            })
        };
        if self.feature_dim as usize != spec.feature_dim {
            return mismatch("feature_dim".into(), self.feature_dim as usize, spec.feature_dim);
        }
        if self.patches as usize != spec.patches {
            return mismatch("patches".into(), self.patches as usize, spec.patches);
        }
        for task in &self.tasks {
            let Some(p) = &task.prompt else { continue };
            for (what, bank, backbone) in [
                ("blocks", p.blocks as usize, spec.prompt_blocks),
                ("len", p.len as usize, spec.prompt_len),
                ("dim", p.rows.dim(), spec.embed_dim),
            ] {
                if bank != backbone {
                    return mismatch(format!("task {:?} prompt {what}", task.name), bank, backbone);
                }
            }
        }
        match spec.arithmetic {
            Some(backbone) if backbone != self.arithmetic => Err(BankError::OtherArithmetic {
                path: origin.to_string(),
                bank: self.arithmetic,
                backbone,
            }),
            _ => Ok(()),
        }
    }
}

fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

/// The intrinsic check of one task of a bank of `feature_dim`.
pub(crate) fn check_task(task: &Task, feature_dim: usize) -> Result<(), Problem> {
    let field = |what: &str| format!("task {:?} {what}", task.name);
    if task.name.is_empty() || task.name.len() > MAX_TASK_NAME || task.name.chars().any(char::is_control) {
        let what = format!("is empty, longer than {MAX_TASK_NAME} bytes or holds control characters");
        return Err(problem(field("name"), what));
    }
    check_rows(&field("key"), &task.key, feature_dim)?;
    if let Some(p) = &task.projection {
        if p.mean.len() != feature_dim {
            return Err(problem(
                field("projection mean"),
                format!("has {} values for feature_dim {feature_dim}", p.mean.len()),
            ));
        }
        if let Some(i) = p.mean.iter().position(|m| m.is_nan() || m.abs() > VALUE_LIMIT) {
            return Err(problem(
                field("projection mean"),
                out_of_range(&format!("value {i} is {}", p.mean[i])),
            ));
        }
        check_rows(&field("projection"), &p.components, feature_dim)?;
        if let Some(found) = p.components.out_of_range(COMPONENT_LIMIT) {
            return Err(problem(
                field("projection"),
                format!("{found}: components are orthonormal rows, within ±{COMPONENT_LIMIT}"),
            ));
        }
        if p.out_dim() > feature_dim {
            return Err(problem(
                field("projection"),
                format!("keeps {} of {feature_dim} dimensions", p.out_dim()),
            ));
        }
    }
    check_rows(&field("knowledge"), &task.knowledge, task.knowledge_dim())?;
    if task.k == 0 || task.k as usize > task.knowledge.len() {
        return Err(problem(
            field("k"),
            format!(
                "is {} with {} knowledge rows (must be 1..=rows)",
                task.k,
                task.knowledge.len()
            ),
        ));
    }
    if let Some(prompt) = &task.prompt {
        check_prompt(&field("prompt"), prompt)?;
    }
    at_least(&field("threshold"), task.threshold, 0.0)?;
    check_normal(&field("normal"), &task.normal)?;
    check_routing(&field("routing"), &task.routing)?;
    check_image(&field("routing image"), &task.routing.image, feature_dim)
}

fn check_rows(field: &str, rows: &Rows, dim: usize) -> Result<(), Problem> {
    if !rows.is_consistent() {
        return Err(problem(
            field,
            format!("rows do not divide into their declared dim {}", rows.dim()),
        ));
    }
    if rows.dim() != dim {
        return Err(problem(field, format!("rows have dim {}, not {dim}", rows.dim())));
    }
    if rows.is_empty() {
        return Err(problem(field, "has no rows"));
    }
    match rows.out_of_range(VALUE_LIMIT) {
        Some(found) => Err(problem(field, out_of_range(&found))),
        None => Ok(()),
    }
}

fn out_of_range(found: &str) -> String {
    format!("{found}: stored values must be finite and within ±2^32")
}

fn check_prompt(field: &str, prompt: &StoredPrompt) -> Result<(), Problem> {
    if prompt.blocks == 0 || prompt.len == 0 {
        return Err(problem(
            field,
            format!(
                "has {} blocks of length {} (both must be ≥ 1)",
                prompt.blocks, prompt.len
            ),
        ));
    }
    let rows = &prompt.rows;
    if !rows.is_consistent() {
        return Err(problem(
            field,
            format!("values do not divide into rows of dim {}", rows.dim()),
        ));
    }
    // [blocks, 2 (key, value), len] rows of dim.
    let expected = 2 * prompt.blocks as u64 * prompt.len as u64;
    if rows.len() as u64 != expected {
        return Err(problem(
            field,
            format!(
                "has {} rows of dim {}, not 2·blocks·len = {expected} for {} blocks of length {}",
                rows.len(),
                rows.dim(),
                prompt.blocks,
                prompt.len
            ),
        ));
    }
    match rows.out_of_range(VALUE_LIMIT) {
        Some(found) => Err(problem(field, out_of_range(&found))),
        None => Ok(()),
    }
}

fn check_normal(field: &str, normal: &NormalStats) -> Result<(), Problem> {
    at_least(&format!("{field} count"), normal.count as f32, 1.0)?;
    finite(&format!("{field} mean"), normal.mean)?;
    at_least(&format!("{field} std"), normal.std, 0.0)?;
    finite(&format!("{field} max"), normal.max)?;
    within(
        &format!("{field} target_false_reject"),
        normal.target_false_reject,
        0.0,
        1.0,
    )
}

fn check_routing(field: &str, routing: &RoutingStats) -> Result<(), Problem> {
    at_least(&format!("{field} count"), routing.count as f32, 1.0)?;
    finite(&format!("{field} mean"), routing.mean)?;
    positive(&format!("{field} std"), routing.std)?;
    finite(&format!("{field} unknown_above"), routing.unknown_above)?;
    at_least(&format!("{field} patch_limit"), routing.patch_limit, 0.0)?;
    check_colour(&format!("{field} colour"), &routing.colour)
}

fn check_image(field: &str, image: &ImageStats, feature_dim: usize) -> Result<(), Problem> {
    check_rows(&format!("{field} descriptors"), &image.descriptors, feature_dim)?;
    at_least(&format!("{field} mean"), image.mean, 0.0)?;
    // Image distances are divided by it: NaN, ∞, 0 or a negative spread would blind routing.
    positive(&format!("{field} std"), image.std)
}

fn check_colour(field: &str, colour: &ColourStats) -> Result<(), Problem> {
    for (d, (mean, spread)) in colour.mean.iter().zip(&colour.spread).enumerate() {
        within(&format!("{field} mean[{d}]"), *mean, -COLOUR_RANGE, COLOUR_RANGE)?;
        // Colour distances are divided by it; a fit never sets less than the floor.
        at_least(&format!("{field} spread[{d}]"), *spread, SPREAD_FLOOR)?;
    }
    at_least(&format!("{field} limit"), colour.limit, 0.0)
}

fn finite(field: &str, value: f32) -> Result<(), Problem> {
    match value.is_finite() {
        true => Ok(()),
        false => Err(problem(field, format!("is {value}, not a finite number"))),
    }
}

fn at_least(field: &str, value: f32, min: f32) -> Result<(), Problem> {
    match value.is_finite() && value >= min {
        true => Ok(()),
        false => Err(problem(
            field,
            format!("is {value}; it must be a finite number ≥ {min}"),
        )),
    }
}

/// For what values are divided by.
fn positive(field: &str, value: f32) -> Result<(), Problem> {
    match value.is_finite() && value >= f32::MIN_POSITIVE {
        true => Ok(()),
        false => Err(problem(field, format!("is {value}; it must be a finite number > 0"))),
    }
}

fn within(field: &str, value: f32, min: f32, max: f32) -> Result<(), Problem> {
    match (min..=max).contains(&value) {
        true => Ok(()),
        false => Err(problem(field, format!("is {value}; it must be in [{min}, {max}]"))),
    }
}
