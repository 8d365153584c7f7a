#![allow(dead_code)] // each test binary uses its own subset of these helpers

pub mod browser;
pub mod device;
pub mod reference;

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
        use ucad::fit::{fit_task, FitParams};
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

/// `task` with finite statistics, as a fit leaves them (an uncalibrated task is never stored).
pub fn calibrated(mut task: ucad::bank::Task) -> ucad::bank::Task {
    use ucad::backbone::colour::COLOUR_DIMS;
    use ucad::bank::colour::ColourStats;
    task.threshold = 0.5;
    (task.normal.count, task.normal.std, task.normal.target_false_reject) = (4, 0.1, 0.01);
    (task.routing.count, task.routing.unknown_above, task.routing.patch_limit) = (4, 15.0, 1.0);
    task.routing.image.std = 1.0;
    task.routing.colour = ColourStats::fit(&[[100.0; COLOUR_DIMS]]);
    task
}

/// A valid two-task bank of random rows for a backbone: task "plain" in f32 with a prompt, task
/// "compact" with f16 key, a projection to 8 dims and int8 knowledge. Every stored kind of value
/// is there for a mutation to reach.
pub fn random_bank(spec: &ucad::backbone::BackboneSpec) -> ucad::bank::Bank {
    use rand::{Rng, SeedableRng};
    use ucad::bank::{Bank, Precision, Projection, Rows, StoredPrompt, Task};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut values = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let dim = spec.feature_dim;
    let mut bank = Bank::new(&spec.sha256, dim, spec.patches);
    let mut plain = Task::uncalibrated(
        "plain",
        Rows::new(dim, values(12 * dim), Precision::F32),
        None,
        Rows::new(dim, values(40 * dim), Precision::F32),
        2,
    );
    plain.prompt = Some(StoredPrompt {
        blocks: spec.prompt_blocks as u32,
        len: spec.prompt_len as u32,
        rows: Rows::new(
            spec.embed_dim,
            values(2 * spec.prompt_blocks * spec.prompt_len * spec.embed_dim),
            Precision::F32,
        ),
    });
    bank.append(calibrated(plain)).expect("a valid task");
    let projection = Projection::fit(&values(64 * dim), dim, 8, Precision::F16, 0);
    let compact = Task::uncalibrated(
        "compact",
        Rows::new(dim, values(12 * dim), Precision::F16),
        Some(projection),
        Rows::new(8, values(40 * 8), Precision::I8),
        1,
    );
    bank.append(calibrated(compact)).expect("a valid task");
    bank
}

/// Host steal time of all CPUs so far (/proc/stat), in clock ticks.
fn host_steal_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().next()?.split_whitespace().nth(8)?.parse().ok()
}

/// Runs `attempt` (which asserts the decisions and returns the timing violations it found)
/// until it finds none. Edge timing is only evidence about our scheduling when the hypervisor
/// did not take the CPU away meanwhile: an attempt whose late edges coincide with host steal
/// time is repeated (at most `attempts` in all); late edges without steal fail at once.
pub fn timing_holds_unless_the_host_steals(attempts: usize, mut attempt: impl FnMut() -> Vec<String>) {
    for count in 1..=attempts {
        let steal_before = host_steal_ticks();
        let late = attempt();
        let stolen = host_steal_ticks()
            .zip(steal_before)
            .map_or(0, |(after, before)| after - before);
        if late.is_empty() {
            return;
        }
        assert!(
            stolen > 0 && count < attempts,
            "late edges ({stolen} ticks of host steal): {late:?}"
        );
        eprintln!("attempt {count}: {late:?} while the host stole {stolen} ticks; repeating");
    }
}

/// Runs `ucad ARGS --json J --html H` in `dir`; the JSON report and the page's path.
pub fn ucad_with_reports(dir: &std::path::Path, args: &[&std::ffi::OsStr]) -> (serde_json::Value, std::path::PathBuf) {
    let (json, html) = (dir.join("report.json"), dir.join("report.html"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ucad"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap(), html)
}
