//! The whole loop on the synthetic conveyor with the simulated reject line: defective parts of
//! interleaved products are rejected on time, normal parts pass. Needs the default backbone
//! (`ucad models fetch`; CI sets UCAD_REQUIRE_MODELS=1 so that its absence fails).

mod common;

use std::time::Duration;

use ucad::backbone::models::ModelCache;
use ucad::backbone::Backbone;
use ucad::fit::FitParams;
use ucad::runtime::config::{RunConfig, SourceConfig};
use ucad::runtime::inspection::Inspector;
use ucad::runtime::learn::learn_conveyor;
use ucad::runtime::source::conveyor;

#[global_allocator]
static ALLOCATOR: ucad::alloc::CountingAllocator = ucad::alloc::CountingAllocator;

const FRAMES: u64 = 18;
/// Runs of the loop allowed when the host steals CPU time during them
/// (`common::timing_holds_unless_the_host_steals`).
const ATTEMPTS: usize = 5;

#[test]
fn defective_parts_of_interleaved_products_are_rejected_on_time() {
    let cache = ModelCache::locate();
    let Ok(path) = cache.resolve("default") else {
        assert!(
            std::env::var_os("UCAD_REQUIRE_MODELS").is_none(),
            "UCAD_REQUIRE_MODELS is set but no default backbone"
        );
        eprintln!("skipping: run `ucad models fetch` first");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config: RunConfig = toml::from_str(include_str!("../board/sim.toml")).unwrap();
    config.bank.path = dir.path().join("bank.ucad");
    // A second between parts and three to the gate: this test is about the loop and the line,
    // so judging (a few hundred ms a frame on two cores, more on a busy machine) is given room.
    config.reject.travel_delay = Duration::from_secs(3);
    config.failsafe.deadline = Duration::from_millis(2500);
    config.failsafe.stall = Duration::from_millis(1500);
    config.source = SourceConfig::Conveyor {
        fps: 1.0,
        products: 2,
        seed: 3,
        run_length: 3,
        defect_every: 2,
        size: 256,
        train_images: 60,
        mjpeg: true,
    };
    config.check().unwrap();
    let backbone = Backbone::load(&path).unwrap();
    // A stricter false-reject target than the default: this test is about the loop and the
    // line, and 12 held-out images cannot pin a 1 % tail of this synthetic product.
    let params = FitParams {
        target_false_reject: 0.001,
        ..FitParams::default()
    };
    learn_conveyor(&backbone, &config.source, &config.bank.path, &params).unwrap();

    let travel = config.reject.travel_delay;
    common::timing_holds_unless_the_host_steals(ATTEMPTS, || run_once(&config, &path, travel));
}

/// One run of the loop; asserts the decisions and returns the timing violations found.
fn run_once(config: &RunConfig, backbone: &std::path::Path, travel: Duration) -> Vec<String> {
    let mut source = conveyor(&config.source).unwrap();
    let mut inspector = Inspector::new(Backbone::load(backbone).unwrap(), config.clone());
    let outcome = inspector.run(&mut source, Some(FRAMES)).unwrap();

    let products: Vec<usize> = outcome.parts.iter().map(|p| p.truth.unwrap().product).collect();
    let switches = products.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(switches >= 2, "products are not interleaved: {products:?}");
    let defective = outcome.parts.iter().filter(|p| p.truth.unwrap().defective).count();
    assert!(
        defective >= 3 && defective < FRAMES as usize,
        "{defective} defective parts"
    );

    let sim = outcome.sim.expect("a simulated line");
    let record = sim.lock().unwrap();
    let rises: Vec<_> = record.edges.iter().filter(|e| e.active).collect();
    let mut late = Vec::new();
    for part in &outcome.parts {
        let due = part.captured + travel;
        let near = |e: &&&ucad::runtime::reject::Edge| {
            let gap = if e.actual > due { e.actual - due } else { due - e.actual };
            gap <= Duration::from_millis(1)
        };
        let truth = part.truth.unwrap();
        assert!(part.failsafe.is_none(), "part {} needed the fail-safe", part.sequence);
        assert_eq!(part.rejected, truth.defective, "part {}: {part:?}", part.sequence);
        let fired = rises.iter().filter(near).count();
        if fired != truth.defective as usize {
            late.push(format!("part {}: {fired} reject edges within ±1 ms", part.sequence));
        }
    }
    assert_eq!(record.edges.len(), 2 * defective, "every pulse rises and falls once");
    assert!(!record.active, "the line is idle after shutdown");
    let summary = &outcome.summary;
    // A late pulse makes its part an escape; the decisions themselves were right (asserted
    // above), so the escapes beyond the late pulses must be none.
    let escapes = summary.escapes.map(|e| e.saturating_sub(summary.late_pulses));
    assert_eq!((escapes, summary.false_rejects), (Some(0), Some(0)));
    if summary.late_pulses > 0 {
        late.push(format!("{} late pulses", summary.late_pulses));
    }
    let worst = summary.reject_timing_error_ms_max.unwrap();
    if worst > 1.0 {
        late.push(format!("an edge was {worst:.3} ms off its schedule"));
    }
    assert_eq!(
        summary.memory.allocations_per_frame,
        Some(0.0),
        "heap allocations after warm-up"
    );
    assert!(summary.memory.peak_rss_bytes.is_some());
    late
}
