//! Over-the-air bank updates against a running device: refused mutations leave it untouched and
//! running, a SIGKILL during installs never leaves it without a whole bank, and hot swaps neither
//! drop a frame nor judge one with a mix of two banks. Tiny backbone: no models needed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ucad::backbone::{Backbone, Preprocessor};
use ucad::bank::{Bank, Capacity};
use ucad::data::folder::load_rgb;
use ucad::detect::Detector;
use ucad::update::client;
use ucad::update::signing::{sign, write_key_pair};
use ucad::update::store::{BankStore, Origin};

const ROOM: Capacity = Capacity {
    tasks: 32,
    bytes_per_task: 2 << 20,
};

/// A device's files: backbone, bank, frames, trusted key, config.
struct Device {
    dir: tempfile::TempDir,
    product: common::TinyProduct,
    key: SigningKey,
    config: PathBuf,
    address: String,
}

impl Device {
    fn new() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let product = common::TinyProduct::new(dir.path());
        product.bank(0.1, 1).save(&dir.path().join("bank.ucad")).unwrap();
        let frames = dir.path().join("frames");
        std::fs::create_dir(&frames).unwrap();
        for (i, item) in product.data.test.iter().enumerate() {
            std::fs::copy(&item.image, frames.join(format!("{i:02}.png"))).unwrap();
        }
        let key = SigningKey::from_bytes(&[7; 32]);
        write_key_pair(&dir.path().join("line.key"), &key).unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("device.toml");
        std::fs::write(&config, device_config(&product.backbone, &address)).unwrap();
        Device {
            dir,
            product,
            key,
            config,
            address,
        }
    }

    fn bank_path(&self) -> PathBuf {
        self.dir.path().join("bank.ucad")
    }

    fn signed(&self, bank: &Bank) -> Vec<u8> {
        sign(&bank.to_bytes(), &self.key)
    }

    /// `ucad run` on this device's config, answering status requests.
    fn start(&self) -> Child {
        let child = Command::new(env!("CARGO_BIN_EXE_ucad"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_listener(&self.address);
        child
    }

    fn status(&self) -> serde_json::Value {
        let answer = client::status(&self.address).unwrap();
        assert_eq!(answer.status, 200);
        serde_json::from_str(&answer.body).unwrap()
    }

    fn installed_version(&self) -> u64 {
        self.status()["bank"]["version"].as_u64().unwrap()
    }
}

fn device_config(backbone: &Path, address: &str) -> String {
    format!(
        r#"backbone = "{}"
log_every_s = 1e9
[bank]
path = "bank.ucad"
[source]
kind = "folder"
path = "frames"
fps = 20.0
repeat = true
[reject]
travel_delay_ms = 1500.0
pulse_width_ms = 40.0
[reject.line]
kind = "simulated"
[failsafe]
action = "reject"
deadline_ms = 1500.0
stall_ms = 5000.0
[memory]
frame_pool_mib = 16
[update]
listen = "{address}"
trusted_keys = ["line.key.pub"]
max_mib = 1
"#,
        backbone.display()
    )
}

fn wait_for_listener(address: &str) {
    let start = Instant::now();
    while client::status(address).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "{address} does not answer");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sha(path: &Path) -> String {
    ucad::fsutil::sha256_file(path).unwrap()
}

#[test]
fn two_hundred_bad_updates_are_refused_and_the_device_keeps_running() {
    let device = Device::new();
    let mut child = device.start();
    let installed_sha = sha(&device.bank_path());
    let frames_before = device.status()["totals"]["frames"].as_u64().unwrap();
    let mut bank = device.product.bank(0.1, 2);
    let newer = device.signed(&bank);
    let by_a_stranger = sign(&bank.to_bytes(), &SigningKey::from_bytes(&[9; 32]));
    let older: Vec<Vec<u8>> = (0..=1)
        .map(|version| {
            bank.version = version;
            device.signed(&bank)
        })
        .collect();
    bank.version = 2;
    bank.backbone_sha256 = "0".repeat(64);
    let other_backbone = device.signed(&bank);
    let cases: Vec<(&str, Vec<u8>, &[u16])> = {
        let mut rng = ChaCha8Rng::seed_from_u64(200);
        (0..200)
            .map(|i| match i % 6 {
                0 => {
                    let mut flipped = newer.clone();
                    let at = rng.random_range(0..flipped.len());
                    flipped[at] ^= 1 << rng.random_range(0..8);
                    ("bit flip", flipped, &[400, 403][..])
                }
                1 => (
                    "truncation",
                    newer[..rng.random_range(0..newer.len())].to_vec(),
                    &[400, 403][..],
                ),
                2 => ("wrong key", by_a_stranger.clone(), &[403][..]),
                3 => ("wrong backbone", other_backbone.clone(), &[422][..]),
                4 => ("older version", older[rng.random_range(0..2)].clone(), &[409][..]),
                _ => {
                    let mut big = newer.clone();
                    big.resize((1 << 20) + 1 + rng.random_range(0..4096), 0);
                    ("oversized", big, &[413][..])
                }
            })
            .collect()
    };
    for (what, body, expected) in &cases {
        let answer = client::push(&device.address, body).unwrap();
        assert!(
            expected.contains(&answer.status),
            "{what}: status {} ({})",
            answer.status,
            answer.body
        );
    }
    assert!(child.try_wait().unwrap().is_none(), "the device is still running");
    let status = device.status();
    assert_eq!(status["bank"]["version"].as_u64(), Some(1));
    assert!(
        status["totals"]["frames"].as_u64().unwrap() > frames_before,
        "frames kept flowing"
    );
    assert_eq!(status["totals"]["failsafe_rejects"].as_u64(), Some(0));
    assert_eq!(
        sha(&device.bank_path()),
        installed_sha,
        "the installed bank is unchanged"
    );

    let answer = client::push(&device.address, &newer).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(device.installed_version(), 2);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_device_killed_during_installs_always_restarts_with_a_whole_bank() {
    let device = Device::new();
    let spec = Backbone::load(&device.product.backbone).unwrap().spec();
    let store = BankStore::new(&device.bank_path(), spec, ROOM);
    let mut rng = ChaCha8Rng::seed_from_u64(50);
    // How long an install takes here, so that the kills spread over and around installs.
    // (the second of two pushes: the first also pays for warming up).
    let mut child = device.start();
    let mut window = Duration::ZERO;
    for version in [2, 3] {
        let update = device.signed(&device.product.bank(0.1, version));
        let timed = Instant::now();
        let answer = client::push(&device.address, &update).unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        window = (timed.elapsed() * 2).max(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut kept, mut replaced) = (0, 0);
    let mut version = 3;
    for _ in 0..50 {
        let mut child = device.start();
        assert_eq!(device.installed_version(), version);
        let update = device.signed(&device.product.bank(0.1, version + 1));
        let address = device.address.clone();
        let pusher = std::thread::spawn(move || client::push(&address, &update));
        std::thread::sleep(window.mul_f64(rng.random_range(0.0..1.0)));
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = pusher.join();
        // What the next start-up will load (the same code `ucad run` runs).
        let (bank, origin) = store.load().expect("a whole bank after the kill");
        assert_eq!(origin, Origin::Current, "the current bank is always whole");
        assert!(
            bank.version == version || bank.version == version + 1,
            "version {} after installing {} over {version}",
            bank.version,
            version + 1
        );
        if bank.version == version {
            kept += 1;
        } else {
            replaced += 1;
        }
        version = bank.version;
    }
    eprintln!("50 kills within {window:?} of a push: {kept} kept the old bank, {replaced} came up with the new one");
    assert!(
        kept > 0 && replaced > 0,
        "the kills must land before and after installs"
    );
}

#[test]
fn twenty_hot_swaps_drop_no_frame_and_never_mix_two_banks() {
    use ucad::runtime::config::RunConfig;
    use ucad::runtime::inspection::Inspector;

    let device = Device::new();
    let config = RunConfig::load(&device.config).unwrap();
    let backbone_path = device.product.backbone.clone();
    let frames_dir = device.dir.path().join("frames");
    const FRAMES: u64 = 400;
    // Two different banks of the product (other coresets and thresholds), alternately.
    let variants = [device.product.bank(0.1, 0), device.product.bank(0.05, 0)];
    assert_ne!(variants[0].tasks[0].threshold, variants[1].tasks[0].threshold);

    let inspector = std::thread::spawn(move || {
        let mut source = ucad::runtime::source::folder(&frames_dir, 40.0, true).unwrap();
        let mut inspector = Inspector::new(Backbone::load(&backbone_path).unwrap(), config);
        inspector.run(&mut source, Some(FRAMES)).unwrap()
    });
    wait_for_listener(&device.address);
    let mut pushed = vec![(1u64, variants[0].clone())];
    for version in 2..22u64 {
        let mut bank = variants[version as usize % 2].clone();
        bank.version = version;
        let answer = client::push(&device.address, &device.signed(&bank)).unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        pushed.push((version, bank));
        std::thread::sleep(Duration::from_millis(120));
    }
    let outcome = inspector.join().unwrap();
    let sequences: Vec<u64> = outcome.parts.iter().map(|p| p.sequence).collect();
    assert_eq!(sequences, (0..FRAMES).collect::<Vec<_>>(), "no frame dropped");
    assert_eq!(outcome.summary.failsafe_rejects, 0);
    assert_eq!(outcome.summary.bank_swaps, 20);
    let versions: Vec<u64> = outcome.parts.iter().map(|p| p.bank_version.unwrap()).collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "versions only go up");

    // Every frame's score is exactly what the bank it names gives for that image alone.
    let backbone = Backbone::load(&device.product.backbone).unwrap();
    let mut pre = Preprocessor::new(&backbone.meta);
    let images: Vec<_> = device
        .product
        .data
        .test
        .iter()
        .map(|t| load_rgb(&t.image).unwrap())
        .collect();
    let detectors: Vec<(u64, Detector)> = pushed.iter().map(|(v, b)| (*v, Detector::new(b).unwrap())).collect();
    let mut seen = std::collections::BTreeSet::new();
    for part in &outcome.parts {
        let version = part.bank_version.unwrap();
        seen.insert(version);
        let detector = &detectors.iter().find(|(v, _)| *v == version).unwrap().1;
        let image = &images[part.sequence as usize % images.len()];
        let judged = detector.judge(&backbone, pre.tensor(image).unwrap()).unwrap();
        let want = judged.score - detector.tasks[judged.task].threshold;
        assert_eq!(part.relative_score, want, "frame {} with bank {version}", part.sequence);
    }
    assert!(seen.len() >= 10, "frames were judged with {} bank versions", seen.len());
    assert_eq!(
        Bank::load(&device.bank_path()).unwrap().version,
        21,
        "the last push is installed"
    );
}
