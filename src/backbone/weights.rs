//! ViT weights in timm's layout: one named f32 tensor per parameter, read from and written to
//! safetensors, checked against an [`ArchSpec`] before anything uses them. Linear weights that
//! came from an int8 graph keep their original int8 codes and scales beside them, so that an
//! int8 export reproduces them exactly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use super::arch::{Arch, ArchSpec};

/// One parameter: a row-major f32 array.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Param {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Param {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Param { shape, data }
    }
}

/// A Linear weight [out, in] as int8 codes with one scale per output channel (symmetric):
/// W[o, i] = codes[o, i] · scales[o].
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Weight {
    pub codes: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Suffixes of an [`Int8Weight`]'s two tensors in a safetensors file, after the weight's name.
const CODES_SUFFIX: &str = ".int8";
const SCALES_SUFFIX: &str = ".int8_scale";

/// The parameters of one ViT, keyed by their timm names.
#[derive(Debug, Clone, Default)]
pub struct VitWeights {
    pub params: BTreeMap<String, Param>,
    /// The original int8 form of Linear weights (same names as in `params`), where there was one.
    pub int8: BTreeMap<String, Int8Weight>,
    /// Hex sha256 of the file they came from (or of their bytes when generated).
    pub sha256: String,
}

/// A weights file whose tensors do not match what the arch needs.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: weights do not fit arch {arch}: {}", problems.join("; "))]
pub struct MappingError {
    pub origin: String,
    pub arch: Arch,
    pub problems: Vec<String>,
}

/// The names and shapes a ViT of this spec must have, in timm's layout.
pub(crate) fn expected_shapes(spec: &ArchSpec) -> Vec<(String, Vec<usize>)> {
    let d = spec.embed_dim;
    let h = spec.mlp_hidden;
    let tokens = 1 + spec.stored_grid * spec.stored_grid;
    let mut out = vec![
        (
            "patch_embed.proj.weight".to_string(),
            vec![d, 3, spec.patch, spec.patch],
        ),
        ("cls_token".to_string(), vec![1, 1, d]),
        ("pos_embed".to_string(), vec![1, tokens, d]),
    ];
    if spec.patch_bias {
        out.push(("patch_embed.proj.bias".into(), vec![d]));
    }
    if spec.pre_norm {
        out.push(("norm_pre.weight".into(), vec![d]));
        out.push(("norm_pre.bias".into(), vec![d]));
    }
    for i in 0..spec.depth {
        let p = |s: &str| format!("blocks.{i}.{s}");
        out.push((p("norm1.weight"), vec![d]));
        out.push((p("norm1.bias"), vec![d]));
        out.push((p("attn.qkv.weight"), vec![3 * d, d]));
        out.push((p("attn.qkv.bias"), vec![3 * d]));
        out.push((p("attn.proj.weight"), vec![d, d]));
        out.push((p("attn.proj.bias"), vec![d]));
        out.push((p("norm2.weight"), vec![d]));
        out.push((p("norm2.bias"), vec![d]));
        out.push((p("mlp.fc1.weight"), vec![h, d]));
        out.push((p("mlp.fc1.bias"), vec![h]));
        out.push((p("mlp.fc2.weight"), vec![d, h]));
        out.push((p("mlp.fc2.bias"), vec![d]));
        if spec.layer_scale {
            out.push((p("ls1.gamma"), vec![d]));
            out.push((p("ls2.gamma"), vec![d]));
        }
    }
    out
}

impl VitWeights {
    /// Fails with every missing or mis-shaped name at once. Extra tensors (heads, final norms)
    /// are allowed: real checkpoints carry them.
    pub fn validate(&self, arch: Arch, origin: &str) -> Result<(), MappingError> {
        let problems: Vec<String> = expected_shapes(&arch.spec())
            .into_iter()
            .filter_map(|(name, shape)| match self.params.get(&name) {
                None => Some(format!("missing {name}")),
                Some(p) if p.shape != shape => Some(format!("{name} has shape {:?}, expected {shape:?}", p.shape)),
                Some(_) => None,
            })
            .chain(self.int8.iter().filter_map(|(name, q)| self.int8_problem(name, q)))
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(MappingError {
                origin: origin.to_string(),
                arch,
                problems,
            })
        }
    }

    /// What is wrong with `name`'s int8 form: it must have the f32 weight's shape and reproduce
    /// its values exactly, or an int8 export would not compute what the f32 one does.
    fn int8_problem(&self, name: &str, q: &Int8Weight) -> Option<String> {
        let Some(p) = self.params.get(name) else {
            return Some(format!("{name}{CODES_SUFFIX} has no f32 weight {name}"));
        };
        if p.shape.len() != 2 || q.codes.len() != p.data.len() || q.scales.len() != p.shape[0] {
            return Some(format!(
                "{name}: {} int8 codes and {} scales do not fit its shape {:?}",
                q.codes.len(),
                q.scales.len(),
                p.shape
            ));
        }
        if let Some(o) = q.scales.iter().position(|s| !s.is_finite() || *s <= 0.0) {
            return Some(format!(
                "{name}: int8 scale {o} is {}, not a finite positive number",
                q.scales[o]
            ));
        }
        let values = crate::backbone::dequant::dequantize(&q.codes, &q.scales, p.shape[1]);
        let differs = values.iter().zip(&p.data).position(|(a, b)| a.to_bits() != b.to_bits());
        differs.map(|i| format!("{name}: int8 codes and scales do not reproduce its f32 value at index {i}"))
    }

    pub fn get(&self, name: &str) -> Result<&Param> {
        self.params
            .get(name)
            .with_context(|| format!("weights lack tensor {name}"))
    }

    /// Random weights for tests: deterministic for a seed, scaled so activations stay O(1).
    pub fn random(arch: Arch, seed: u64) -> VitWeights {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = BTreeMap::new();
        for (name, shape) in expected_shapes(&arch.spec()) {
            let len: usize = shape.iter().product();
            let fan_in = if shape.len() >= 2 {
                shape[1..].iter().product::<usize>()
            } else {
                1
            };
            let data: Vec<f32> =
                if name.ends_with("norm1.weight") || name.ends_with("norm2.weight") || name == "norm_pre.weight" {
                    (0..len).map(|_| 1.0 + rng.random_range(-0.1..0.1)).collect()
                } else {
                    let scale = 1.0 / (fan_in as f32).sqrt();
                    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
                };
            params.insert(name, Param::new(shape, data));
        }
        let mut weights = VitWeights {
            params,
            ..VitWeights::default()
        };
        weights.sha256 = hex::encode(Sha256::digest(weights.to_safetensors_bytes(arch).unwrap_or_default()));
        weights
    }

    pub fn load(path: &Path) -> Result<(VitWeights, Option<Arch>)> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read weights {}", path.display()))?;
        let parsed = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
        let mut params = BTreeMap::new();
        let mut codes = BTreeMap::new();
        for (name, view) in parsed.tensors() {
            if let Some(weight) = name.strip_suffix(CODES_SUFFIX) {
                if view.dtype() != Dtype::I8 {
                    bail!(
                        "{}: {name} is {:?}, int8 codes must be I8",
                        path.display(),
                        view.dtype()
                    );
                }
                codes.insert(
                    weight.to_string(),
                    view.data().iter().map(|b| *b as i8).collect::<Vec<i8>>(),
                );
                continue;
            }
            let data = to_f32(&view).with_context(|| format!("{}: tensor {name}", path.display()))?;
            params.insert(name, Param::new(view.shape().to_vec(), data));
        }
        let mut int8 = BTreeMap::new();
        for (name, codes) in codes {
            let scales = params
                .remove(&format!("{name}{SCALES_SUFFIX}"))
                .with_context(|| format!("{}: {name}{CODES_SUFFIX} has no {name}{SCALES_SUFFIX}", path.display()))?;
            int8.insert(
                name,
                Int8Weight {
                    codes,
                    scales: scales.data,
                },
            );
        }
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{}: unreadable safetensors header", path.display()))?;
        let arch = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("arch"))
            .and_then(|a| Arch::from_name(a));
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok((VitWeights { params, int8, sha256 }, arch))
    }

    /// Loads and checks that the file is for `arch` (by its recorded arch and by every shape).
    pub fn load_for(path: &Path, arch: Arch) -> Result<VitWeights> {
        let (weights, recorded) = VitWeights::load(path)?;
        if let Some(recorded) = recorded {
            if recorded != arch {
                bail!("{}: weights are for arch {recorded}, not {arch}", path.display());
            }
        }
        weights.validate(arch, &path.display().to_string())?;
        Ok(weights)
    }

    pub fn to_safetensors_bytes(&self, arch: Arch) -> Result<Vec<u8>> {
        let f32_bytes = |data: &[f32]| -> Vec<u8> { data.iter().flat_map(|v| v.to_le_bytes()).collect() };
        let mut bytes: Vec<(String, Dtype, Vec<u8>, Vec<usize>)> = self
            .params
            .iter()
            .map(|(name, p)| (name.clone(), Dtype::F32, f32_bytes(&p.data), p.shape.clone()))
            .collect();
        for (name, q) in &self.int8 {
            let shape = self.get(name)?.shape.clone();
            let codes = q.codes.iter().map(|c| *c as u8).collect();
            bytes.push((format!("{name}{CODES_SUFFIX}"), Dtype::I8, codes, shape));
            let scales = (
                format!("{name}{SCALES_SUFFIX}"),
                Dtype::F32,
                f32_bytes(&q.scales),
                vec![q.scales.len()],
            );
            bytes.push(scales);
        }
        let views = bytes
            .iter()
            .map(|(name, dtype, data, shape)| Ok((name.as_str(), TensorView::new(*dtype, shape.clone(), data)?)))
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let metadata = HashMap::from([("arch".to_string(), arch.name().to_string())]);
        Ok(safetensors::serialize(views, Some(metadata))?)
    }

    /// Writes atomically (temp file + rename) so an interrupted import never leaves half a file.
    pub fn save(&self, arch: Arch, path: &Path) -> Result<()> {
        let bytes = self.to_safetensors_bytes(arch)?;
        crate::fsutil::write_atomic(path, &bytes)
    }
}

fn to_f32(view: &TensorView) -> Result<Vec<f32>> {
    let raw = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => bail!("dtype {other:?} is not a float type"),
    })
}
