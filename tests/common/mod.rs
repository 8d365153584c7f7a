#![allow(dead_code)] // each test binary uses its own subset of these helpers

pub mod reference;

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb).max(1e-30)) as f32
}

/// Whether `arch`'s weights and original graph are fetched; when they are not, the caller skips,
/// unless UCAD_REQUIRE_MODELS is set (CI), which fails instead.
pub fn models_present(cache: &ucad::backbone::models::ModelCache, arch: ucad::backbone::Arch) -> bool {
    let present = cache.weights(arch).is_file() && cache.original_onnx(arch).is_ok_and(|p| p.is_file());
    if !present {
        assert!(
            std::env::var_os("UCAD_REQUIRE_MODELS").is_none(),
            "UCAD_REQUIRE_MODELS is set but {arch} is not fetched"
        );
        eprintln!("skipping: {arch} is not fetched (run `ucad models fetch` first)");
    }
    present
}

/// Exports the tiny random ViT (8×8 patches of a 64-pixel input) into `dir`.
pub fn tiny_backbone(dir: &std::path::Path) -> std::path::PathBuf {
    use ucad::backbone::{export_to_file, Arch, ExportOptions, VitWeights};
    let arch = Arch::VitTinyTest;
    let options = ExportOptions {
        input_size: 64,
        blocks: vec![2],
        ..ExportOptions::defaults(arch)
    };
    let path = dir.join("tiny.onnx");
    export_to_file(&VitWeights::random(arch, 11), &options, &path).expect("export the tiny backbone");
    path
}

/// Writes `count` generated products (MVTec AD layout) under `dir` and returns their names.
pub fn synthetic_products(
    dir: &std::path::Path,
    count: usize,
    counts: ucad::data::synthetic::SplitCounts,
) -> Vec<String> {
    ucad::data::synthetic::products(count, 5)
        .iter()
        .map(|p| {
            p.write_mvtec(dir, 64, counts).expect("write a product");
            p.name.clone()
        })
        .collect()
}

/// One generated product on the tiny backbone: its data, and banks fitted on it.
pub struct TinyProduct {
    pub backbone: std::path::PathBuf,
    pub data: ucad::data::dataset::TaskData,
}

impl TinyProduct {
    /// Exports the tiny backbone and writes one product (16 train, 4 good, 4 defective) to `dir`.
    pub fn new(dir: &std::path::Path) -> TinyProduct {
        let backbone = tiny_backbone(dir);
        let counts = ucad::data::synthetic::SplitCounts {
            train: 16,
            test_good: 4,
            test_defective: 4,
        };
        let name = &synthetic_products(dir, 1, counts)[0];
        let data = ucad::data::dataset::load_task(dir, name).expect("read the product");
        TinyProduct { backbone, data }
    }

    /// A one-task bank for the product with a `knowledge_fraction` coreset and the given version.
    pub fn bank(&self, knowledge_fraction: f32, version: u64) -> ucad::bank::Bank {
        use ucad::detect::fit::{fit_task, FitParams};
        let backbone = ucad::backbone::Backbone::load(&self.backbone).expect("load the tiny backbone");
        let params = FitParams {
            key_rows: 24,
            knowledge_fraction,
            ..FitParams::default()
        };
        let mut bank = ucad::bank::Bank::new(
            &backbone.file_sha256,
            backbone.meta.feature_dim(),
            backbone.meta.patches(),
        );
        bank.append(fit_task(&backbone, &self.data.name, &self.data.train, &params).expect("fit"))
            .expect("append");
        bank.version = version;
        bank
    }
}

/// Host steal time of all CPUs so far (/proc/stat), in clock ticks: edge timing is evidence
/// about our scheduling only while the hypervisor did not take the CPU away.
pub fn host_steal_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().next()?.split_whitespace().nth(8)?.parse().ok()
}
