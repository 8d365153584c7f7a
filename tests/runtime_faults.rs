//! The loop's fixed memory and its fail-safes, on the tiny backbone (no models needed): steady
//! frames take nothing from the heap; a stall, a camera error, a damaged JPEG, a deadline miss
//! and a panic while judging each reject (or stop the line), log why, and the loop goes on where
//! it can; a bank that keeps faulting is demoted; a listener that cannot bind stops the line
//! before the loop.

mod common;

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use image::RgbImage;
use ucad::backbone::Backbone;
use ucad::data::folder::load_rgb;
use ucad::runtime::config::{AuditConfig, FailsafeAction, Roi, RunConfig, SourceConfig};
use ucad::runtime::inspection::{Inspector, Outcome};
use ucad::runtime::pixels::encode_jpeg;
use ucad::runtime::source::{Frame, FrameSource};

#[global_allocator]
static ALLOCATOR: ucad::alloc::CountingAllocator = ucad::alloc::CountingAllocator;

/// Allocation counts are process-wide: these tests run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Warnings and errors the loop logged.
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            LOGGED.lock().unwrap().push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

fn serial() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = log::set_logger(&CAPTURE).map(|()| log::set_max_level(log::LevelFilter::Warn));
    LOGGED.lock().unwrap().clear();
    guard
}

fn logged(part: &str) -> bool {
    LOGGED.lock().unwrap().iter().any(|l| l.contains(part))
}

/// A tiny backbone, a one-product bank and that product's test images (good ones first).
struct Setup {
    dir: tempfile::TempDir,
    backbone: std::path::PathBuf,
    config: RunConfig,
    good: Vec<RgbImage>,
    defective: Vec<RgbImage>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let product = common::TinyProduct::new(dir.path());
    let bank = product.bank(0.1, 1);
    let mut config: RunConfig = toml::from_str(include_str!("../board/sim.toml")).unwrap();
    config.bank.path = dir.path().join("bank.ucad");
    bank.save(&config.bank.path).unwrap();
    config.log_every = Duration::from_secs(1_000_000_000);
    config.memory.frame_pool_mib = 16;
    // Scripted sources deliver frames as fast as a 50 fps camera: frame buffers for that.
    config.source = SourceConfig::Folder {
        path: dir.path().into(),
        fps: 50.0,
        repeat: false,
    };
    let (good, defective): (Vec<_>, Vec<_>) = product.data.test.iter().partition(|t| t.mask.is_none());
    let images = |items: Vec<&ucad::data::dataset::TestItem>| -> Vec<RgbImage> {
        items.iter().map(|t| load_rgb(&t.image).unwrap()).collect()
    };
    Setup {
        config,
        backbone: product.backbone,
        good: images(good),
        defective: images(defective),
        dir,
    }
}

impl Setup {
    fn run(&self, config: RunConfig, source: &mut dyn FrameSource, frames: Option<u64>) -> anyhow::Result<Outcome> {
        let mut inspector = Inspector::new(Backbone::load(&self.backbone).unwrap(), config);
        inspector.run(source, frames)
    }
}

/// What a scripted source does next.
enum Event {
    Image(RgbImage),
    Jpeg(Vec<u8>),
    /// A frame captured this long ago.
    Old(RgbImage, Duration),
    /// Nothing for this long, then the image.
    After(Duration, RgbImage),
    Fail,
    /// A driver bug.
    Panic,
}

struct Scripted {
    events: VecDeque<Event>,
    sequence: u64,
}

impl Scripted {
    fn new(events: impl IntoIterator<Item = Event>) -> Scripted {
        Scripted {
            events: events.into_iter().collect(),
            sequence: 0,
        }
    }
}

impl FrameSource for Scripted {
    fn next(&mut self, frame: &mut Frame) -> anyhow::Result<bool> {
        let Some(event) = self.events.pop_front() else {
            return Ok(false);
        };
        let mut captured = Instant::now();
        let image = match event {
            Event::Image(image) => image,
            Event::Jpeg(bytes) => {
                frame.set_jpeg(&bytes);
                return self.deliver(frame, captured);
            }
            Event::Old(image, age) => {
                captured -= age;
                image
            }
            Event::After(gap, image) => {
                std::thread::sleep(gap);
                captured = Instant::now();
                image
            }
            Event::Fail => anyhow::bail!("camera: VIDIOC_DQBUF failed (device gone)"),
            Event::Panic => panic!("camera driver bug"),
        };
        frame.image = image;
        frame.jpeg = false;
        self.deliver(frame, captured)
    }
}

impl Scripted {
    fn deliver(&mut self, frame: &mut Frame, captured: Instant) -> anyhow::Result<bool> {
        frame.captured = captured;
        frame.sequence = self.sequence;
        frame.truth = None;
        self.sequence += 1;
        Ok(true)
    }
}

#[test]
fn steady_state_frames_take_nothing_from_the_heap() {
    let _serial = serial();
    let s = setup();
    // A folder replay of PNG and JPEG frames (JPEGs are decoded in the loop), a region of
    // interest, and audit saving of the rejected ones: every per-frame path at once.
    let frames = s.dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for (i, image) in s.good.iter().chain(&s.defective).enumerate() {
        if i % 2 == 0 {
            image.save(frames.join(format!("{i:02}.png"))).unwrap();
        } else {
            std::fs::write(frames.join(format!("{i:02}.jpg")), encode_jpeg(image).unwrap()).unwrap();
        }
    }
    let mut config = s.config.clone();
    config.roi = Some(Roi {
        x: 0,
        y: 0,
        width: 60,
        height: 64,
    });
    // The backbone on two threads, with every product threaded (the tiny ViT's are far below
    // tract's thresholds): the pool's threads allocate from the frame pool too.
    config.runtime.threads = 2;
    tract_linalg::multithread::set_threading_panel_threshold(0);
    tract_linalg::multithread::set_threading_element_threshold(0);
    config.audit = Some(AuditConfig {
        dir: s.dir.path().join("audit"),
        max_mib: 1,
        queue: 2,
    });
    let mut source = ucad::runtime::source::folder(&frames, 20.0, true).unwrap();
    let outcome = s.run(config, &mut source, Some(48)).unwrap();
    let summary = outcome.summary;
    assert_eq!(summary.frames, 48);
    assert_eq!(summary.failsafe_rejects, 0, "{:?}", LOGGED.lock().unwrap());
    assert!(summary.rejects > 0, "some parts are rejected (and audited)");
    assert_eq!(summary.memory.allocations_per_frame, Some(0.0));
    assert!(
        summary.memory.pool_allocations_per_frame.unwrap() > 0.0,
        "tract's tensors come from the frame pool"
    );
    assert!(summary.memory.frame_pool_peak_bytes > 0 && summary.memory.frame_pool_bytes == 16 << 20);
    let saved = std::fs::read_dir(s.dir.path().join("audit")).unwrap().count();
    assert!(saved > 0, "rejected frames are saved for audit");
}

#[test]
fn a_stall_keeps_the_reject_gate_active_while_unseen_parts_pass() {
    let _serial = serial();
    let s = setup();
    let mut config = s.config.clone();
    config.failsafe.stall = Duration::from_millis(100);
    let good = &s.good[0];
    let gap = Duration::from_millis(400);
    let mut source = Scripted::new([
        Event::Image(good.clone()),
        Event::After(gap, good.clone()),
        Event::Image(good.clone()),
    ]);
    let outcome = s.run(config, &mut source, None).unwrap();
    assert_eq!(outcome.summary.frames, 3);
    assert_eq!(outcome.summary.stalls, 1);
    assert!(logged("no frames for"), "{:?}", LOGGED.lock().unwrap());
    let record = outcome.sim.unwrap();
    let edges = &record.lock().unwrap().edges;
    let held = edges
        .windows(2)
        .filter(|w| w[0].active && !w[1].active)
        .map(|w| w[1].intended - w[0].intended)
        .max()
        .expect("a reject pulse");
    assert!(held >= gap, "the gate was active {held:?} for a {gap:?} stall");
}

#[test]
fn camera_errors_reject_blind_and_end_the_loop_only_when_they_persist() {
    let _serial = serial();
    let s = setup();
    let good = &s.good[0];
    let mut source = Scripted::new([Event::Image(good.clone()), Event::Fail, Event::Image(good.clone())]);
    let outcome = s.run(s.config.clone(), &mut source, None).unwrap();
    assert_eq!((outcome.summary.frames, outcome.summary.stalls), (2, 1));
    assert!(logged("device gone") && logged("no frames for"));

    let retries = s.config.failsafe.source_retries as usize;
    let mut failing = Scripted::new(std::iter::repeat_with(|| Event::Fail).take(retries + 2));
    let err = s
        .run(s.config.clone(), &mut failing, None)
        .unwrap()
        .fault
        .expect("the loop ends");
    assert!(format!("{err:#}").contains("failed"), "{err:#}");

    let mut config = s.config.clone();
    config.failsafe.action = FailsafeAction::StopLine;
    config.failsafe.stop_line = Some(ucad::runtime::config::LineConfig::Simulated);
    let mut once = Scripted::new([Event::Fail, Event::Image(good.clone())]);
    let err = s
        .run(config, &mut once, None)
        .unwrap()
        .fault
        .expect("stop_line ends the loop");
    assert!(format!("{err:#}").contains("unseen"), "{err:#}");

    let mut buggy = Scripted::new([Event::Image(good.clone()), Event::Panic]);
    let err = s
        .run(s.config.clone(), &mut buggy, None)
        .unwrap()
        .fault
        .expect("a panicking source ends the loop");
    assert!(format!("{err:#}").contains("camera driver bug"), "{err:#}");
}

#[test]
fn a_damaged_jpeg_and_a_deadline_miss_are_rejected_and_logged() {
    let _serial = serial();
    let s = setup();
    let jpeg = encode_jpeg(&s.good[0]).unwrap();
    let deadline = s.config.failsafe.deadline;
    let mut source = Scripted::new([
        Event::Jpeg(jpeg.clone()),
        Event::Jpeg(jpeg[..jpeg.len() / 3].to_vec()),
        Event::Old(s.good[1].clone(), deadline * 2),
        Event::Image(s.good[2].clone()),
    ]);
    let outcome = s.run(s.config.clone(), &mut source, None).unwrap();
    let failsafe: Vec<bool> = outcome.parts.iter().map(|p| p.failsafe.is_some()).collect();
    assert_eq!(failsafe, [false, true, true, false]);
    assert!(outcome
        .parts
        .iter()
        .filter(|p| p.failsafe.is_some())
        .all(|p| p.rejected));
    assert!(logged("frame 1: ") && logged("JPEG"), "{:?}", LOGGED.lock().unwrap());
    assert!(logged("frame 2: ") && logged("too late to judge by its deadline"));
    assert_eq!(outcome.summary.failsafe_rejects, 2);
}

#[test]
fn an_unknown_product_is_failsafed_and_counted() {
    let _serial = serial();
    let s = setup();
    // Generated products 1 and 2 have other patterns and colours than the learned product 0.
    let foreign: Vec<RgbImage> = ucad::data::synthetic::products(3, 5)[1..]
        .iter()
        .map(|p| p.normal(64, 0))
        .collect();
    let mut source = Scripted::new([
        Event::Image(s.good[0].clone()),
        Event::Image(foreign[0].clone()),
        Event::Image(s.good[1].clone()),
        Event::Image(foreign[1].clone()),
    ]);
    let outcome = s.run(s.config.clone(), &mut source, None).unwrap();
    let failsafe: Vec<bool> = outcome.parts.iter().map(|p| p.failsafe.is_some()).collect();
    assert_eq!(failsafe, [false, true, false, true]);
    assert!(outcome
        .parts
        .iter()
        .filter(|p| p.failsafe.is_some())
        .all(|p| p.rejected && p.task.is_none()));
    assert_eq!(outcome.summary.unknown_products, 2);
    assert_eq!(outcome.summary.failsafe_rejects, 2);
    assert!(logged("frame 1: no learned product explains it"));
}

#[test]
fn the_audit_folder_stays_within_its_budget() {
    let _serial = serial();
    let s = setup();
    let audit = s.dir.path().join("audit");
    std::fs::create_dir(&audit).unwrap();
    // What an earlier run left: 1 MiB of old files, which the budget must count.
    std::fs::write(audit.join("0000000000-old.jpg"), vec![0u8; 1 << 20]).unwrap();
    let mut config = s.config.clone();
    config.audit = Some(AuditConfig {
        dir: audit.clone(),
        max_mib: 1,
        queue: 4,
    });
    let mut source = Scripted::new(s.defective.iter().cycle().take(12).map(|d| Event::Image(d.clone())));
    let outcome = s.run(config, &mut source, None).unwrap();
    assert!(outcome.summary.rejects >= 6, "{:?}", outcome.summary);
    let files: Vec<_> = std::fs::read_dir(&audit).unwrap().map(|e| e.unwrap()).collect();
    let total: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(total <= 1 << 20, "{total} bytes on disk");
    assert!(!audit.join("0000000000-old.jpg").exists(), "the oldest file went first");
    let heatmaps = files
        .iter()
        .filter(|f| f.file_name().to_string_lossy().ends_with("-heatmap.jpg"))
        .count();
    assert!(heatmaps > 0);
}

#[test]
fn parts_the_audit_cannot_save_are_counted() {
    let _serial = serial();
    let s = setup();
    let mut config = s.config.clone();
    // A folder no file can be written into, root or not.
    config.audit = Some(AuditConfig {
        dir: "/proc/self".into(),
        max_mib: 1,
        queue: 4,
    });
    let mut source = Scripted::new(s.defective.iter().cycle().take(6).map(|d| Event::Image(d.clone())));
    let outcome = s.run(config, &mut source, None).unwrap();
    assert!(outcome.summary.rejects >= 3, "{:?}", outcome.summary);
    assert_eq!(
        outcome.summary.audit_not_saved, outcome.summary.rejects,
        "{:?}",
        outcome.summary
    );
}

/// The setup's bank with a prompt of the right shape but too few values: on the tiny backbone,
/// judging a frame with it panics (an out-of-range copy) before any check catches it.
fn faulty_bank(s: &Setup, version: u64) -> ucad::bank::Bank {
    use ucad::bank::{Precision, Rows, StoredPrompt};
    let mut bank = ucad::bank::Bank::load(&s.config.bank.path).unwrap();
    let meta = Backbone::load(&s.backbone).unwrap().meta;
    bank.tasks[0].prompt = Some(StoredPrompt {
        blocks: meta.prompt_blocks as u32,
        len: meta.prompt_len as u32,
        rows: Rows::new(meta.embed_dim, vec![0.0; meta.embed_dim], Precision::F32),
    });
    bank.version = version;
    bank
}

/// An inspector that judges with `bank` from its first frame on, as if the update listener had
/// just installed it (bank checks at load time do not stand in its way).
fn inspector_with(s: &Setup, config: RunConfig, bank: &ucad::bank::Bank) -> Inspector {
    use ucad::update::state::Installed;
    use ucad::update::store::Origin;
    let inspector = Inspector::new(Backbone::load(&s.backbone).unwrap(), config);
    let installed = Installed::new(bank, Origin::Pushed).unwrap();
    inspector.state().installed.store(Some(std::sync::Arc::new(installed)));
    inspector
}

#[test]
fn a_bank_that_faults_in_judging_gets_the_failsafe_and_is_demoted() {
    let _serial = serial();
    let s = setup();
    // Only the faulty bank on disk: demoting it leaves no bank, and every part the fail-safe.
    let bad = faulty_bank(&s, 2);
    std::fs::write(&s.config.bank.path, bad.to_bytes()).unwrap();
    let mut inspector = inspector_with(&s, s.config.clone(), &bad);
    let mut source = Scripted::new(s.good.iter().cycle().take(5).map(|g| Event::Image(g.clone())));
    let outcome = inspector.run(&mut source, None).expect("the loop ends cleanly");
    let summary = &outcome.summary;
    assert_eq!(summary.frames, 5);
    assert_eq!(summary.failsafe_rejects, 5);
    assert!(outcome.parts.iter().all(|p| p.rejected && p.failsafe.is_some()));
    // The prompt of the wrong length is an error of the backbone's (a panic before the bank
    // checks); a panic is contained the same way (the unit test in runtime::inspection).
    assert_eq!(summary.judging_panics, 0, "{:?}", LOGGED.lock().unwrap());
    assert_eq!(summary.bank_demotions, 1);
    assert!(logged("prompt") && logged("faulted on its first") && logged("no last-known-good bank"));
    let demoted = inspector
        .state()
        .demoted
        .lock()
        .unwrap()
        .clone()
        .expect("demotion reported");
    assert_eq!(demoted.version, 2);
}

#[test]
fn a_demoted_bank_gives_way_to_the_last_known_good_one() {
    let _serial = serial();
    let s = setup();
    let store = ucad::update::store::BankStore::new(
        &s.config.bank.path,
        Backbone::load(&s.backbone).unwrap().spec(),
        s.config.bank.capacity(),
    );
    let bad = faulty_bank(&s, 2);
    // The good version 1 becomes the last-known-good copy.
    store.install(&bad.to_bytes(), bad.version).unwrap();
    let mut inspector = inspector_with(&s, s.config.clone(), &bad);
    let mut source = Scripted::new(s.good.iter().cycle().take(6).map(|g| Event::Image(g.clone())));
    let outcome = inspector.run(&mut source, None).unwrap();
    let judged_by: Vec<Option<u64>> = outcome.parts.iter().map(|p| p.bank_version).collect();
    assert_eq!(judged_by, [None, None, None, Some(1), Some(1), Some(1)]);
    assert!(outcome.parts[..3].iter().all(|p| p.rejected && p.failsafe.is_some()));
    assert_eq!((outcome.summary.judging_panics, outcome.summary.bank_demotions), (0, 1));
    assert!(logged("back on the last-known-good bank version 1"));
    assert_eq!(inspector.state().demoted.lock().unwrap().as_ref().unwrap().version, 2);
    // On disk too: a restart runs version 1.
    assert_eq!(store.load().unwrap().0.version, 1);
}

#[test]
fn a_listener_that_cannot_bind_stops_the_line_before_the_loop() {
    let _serial = serial();
    let s = setup();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let key = s.dir.path().join("line.key");
    ucad::update::signing::write_key_pair(&key, &ucad::update::signing::generate_key().unwrap()).unwrap();
    let mut config = s.config.clone();
    config.failsafe.action = FailsafeAction::StopLine;
    config.failsafe.stop_line = Some(ucad::runtime::config::LineConfig::Simulated);
    let update = format!(
        "{}\n[update]\nlisten = \"{}\"\nline = \"line-1\"\ntrusted_keys = [\"{}\"]\n",
        include_str!("../board/sim.toml"),
        taken.local_addr().unwrap(),
        ucad::update::signing::public_key_path(&key).display()
    );
    config.update = RunConfig::parse(&update, s.dir.path()).unwrap().update;
    let mut source = Scripted::new([Event::Image(s.good[0].clone())]);
    let err = s
        .run(config, &mut source, None)
        .err()
        .expect("no loop without the listener");
    assert!(format!("{err:#}").contains("cannot listen"), "{err:#}");
    assert!(logged("stop line asserted"), "{:?}", LOGGED.lock().unwrap());
    assert_eq!(source.events.len(), 1, "no frame was taken");
}
