//! Over-the-air bank updates against a running device: refused mutations leave it untouched and
//! running, a SIGKILL during installs never leaves it without a whole bank, hot swaps neither
//! drop a frame nor judge one with a mix of two banks, no rollback survives damage to the bank
//! files, slow clients are cut at the request deadline and delay neither status nor shutdown.
//! Tiny backbone: no models needed.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ucad::backbone::BackboneSpec;
use ucad::backbone::{Backbone, Preprocessor};
use ucad::bank::{Bank, Capacity};
use ucad::data::folder::load_rgb;
use ucad::detect::Detector;
use ucad::update::client;
use ucad::update::http::DEADLINE;
use ucad::update::install::Installer;
use ucad::update::listener::UpdateListener;
use ucad::update::policy::UpdatePolicy;
use ucad::update::signing::sign;
use ucad::update::state::DeviceState;
use ucad::update::store::{BankStore, Origin};

use common::device::{device_config, line, wait_for_listener, Device, SlowClient, LINE};

const ROOM: Capacity = Capacity {
    tasks: 32,
    bytes_per_task: 2 << 20,
};

/// `GET /metrics` of a device: the Prometheus text page.
fn metrics(address: &str) -> String {
    let response = ureq::get(&format!("http://{address}/metrics")).call().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    response.into_string().unwrap()
}

/// The sample of one metric on a metrics page.
fn metric(page: &str, name: &str) -> u64 {
    let line = page
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name}:\n{page}"));
    line[name.len() + 1..].parse().unwrap()
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
    let by_a_stranger = sign(&bank.to_bytes(), &line(LINE), &SigningKey::from_bytes(&[9; 32]));
    let for_another_line = sign(&bank.to_bytes(), &line("line-b"), &device.key);
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
            .map(|i| match i % 7 {
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
                5 => ("another line", for_another_line.clone(), &[403][..]),
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
    assert_eq!(status["refused_requests"].as_u64(), Some(200));
    assert_eq!(
        sha(&device.bank_path()),
        installed_sha,
        "the installed bank is unchanged"
    );
    let page = metrics(&device.address);
    assert_eq!(metric(&page, "ucad_refused_requests_total"), 200);
    assert_eq!(metric(&page, "ucad_bank_version"), 1);
    assert!(metric(&page, "ucad_frames_total") >= status["totals"]["frames"].as_u64().unwrap());
    assert!(metric(&page, "ucad_latency_seconds_count") > 0);

    let answer = client::push(&device.address, &newer).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(device.installed_version(), 2);
    assert_eq!(metric(&metrics(&device.address), "ucad_bank_version"), 2);
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
        // A kill between raising the version mark and the rename leaves the mark one ahead.
        let next = store.highest_installed().unwrap().max(version) + 1;
        let update = device.signed(&device.product.bank(0.1, next));
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
            bank.version == version || bank.version == next,
            "version {} after installing {next} over {version}",
            bank.version,
        );
        assert!(store.highest_installed().unwrap() >= bank.version);
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
        let judged = detector
            .judge_image(&backbone, &pre.tensor(image).unwrap(), None, &mut |_| {})
            .unwrap();
        let want = judged.relative();
        assert_eq!(part.relative_score, want, "frame {} with bank {version}", part.sequence);
    }
    assert!(seen.len() >= 10, "frames were judged with {} bank versions", seen.len());
    assert_eq!(
        Bank::load(&device.bank_path()).unwrap().version,
        21,
        "the last push is installed"
    );
}

#[test]
fn no_rollback_after_the_bank_files_are_damaged_or_gone() {
    let device = Device::new();
    let push = |version: u64, line_name: &str| {
        let mut bank = device.product.bank(0.1, version);
        bank.version = version;
        let update = sign(&bank.to_bytes(), &line(line_name), &device.key);
        client::push(&device.address, &update).unwrap()
    };
    let mut child = device.start();
    for version in [5, 7] {
        let answer = push(version, LINE);
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // The current bank (v7) damaged: the device runs the last good one (v5), and still knows v7.
    let mut bytes = std::fs::read(device.bank_path()).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(device.bank_path(), bytes).unwrap();
    let mut child = device.start();
    let status = device.status();
    assert_eq!(status["bank"]["version"].as_u64(), Some(5));
    assert_eq!(status["bank"]["origin"].as_str(), Some("last_good"));
    let answer = push(6, LINE);
    assert_eq!(answer.status, 409, "v6 after v7: {}", answer.body);
    assert!(answer.body.contains("version 7"), "{}", answer.body);
    child.kill().unwrap();
    child.wait().unwrap();

    // Both bank files gone: no bank to run, and still no way back.
    let last_good = PathBuf::from(format!("{}.last-good", device.bank_path().display()));
    std::fs::remove_file(device.bank_path()).unwrap();
    std::fs::remove_file(last_good).unwrap();
    let mut child = device.start();
    assert!(device.status()["bank"].is_null());
    for version in [1, 7] {
        let answer = push(version, LINE);
        assert_eq!(answer.status, 409, "v{version} after v7: {}", answer.body);
    }
    // Nor across lines; the next version for this line is taken.
    let answer = push(8, "line-b");
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        answer.body.contains("line-b") && answer.body.contains(LINE),
        "{}",
        answer.body
    );
    let answer = push(8, LINE);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(device.installed_version(), 8);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A backbone for listeners that never judge.
fn spec() -> BackboneSpec {
    BackboneSpec {
        sha256: "ab".repeat(32),
        feature_dim: 8,
        patches: 4,
        prompt_blocks: 1,
        prompt_len: 1,
        embed_dim: 8,
        arithmetic: Some(ucad::backbone::Arithmetic::F32),
    }
}

/// A listener on its own (no loop, no bank): for the request-level tests.
fn bare_listener(dir: &Path, deadline: Duration) -> UpdateListener {
    let policy = UpdatePolicy {
        trusted: vec![SigningKey::from_bytes(&[7; 32]).verifying_key()],
        line: line(LINE),
        backbone: spec(),
        capacity: ROOM,
        max_bytes: 1 << 20,
        request_deadline: deadline,
    };
    let store = BankStore::new(&dir.join("bank.ucad"), spec(), ROOM);
    let installer = Installer::new(policy, store, Arc::new(DeviceState::default()));
    UpdateListener::start("127.0.0.1:0", Arc::new(installer)).unwrap()
}

/// The longest `GET /status` took, polled every 100 ms while `busy` runs.
fn status_latency_during<T>(address: &str, busy: impl FnOnce() -> T) -> (Duration, T) {
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (done, address) = (done.clone(), address.to_string());
        std::thread::spawn(move || {
            let mut longest = Duration::ZERO;
            while !done.load(Ordering::Acquire) {
                let asked = Instant::now();
                assert_eq!(client::status(&address).unwrap().status, 200);
                longest = longest.max(asked.elapsed());
                std::thread::sleep(Duration::from_millis(100));
            }
            longest
        })
    };
    let result = busy();
    done.store(true, Ordering::Release);
    (poller.join().unwrap(), result)
}

/// A request line, then a header line, that never end: one byte every 1.5 s.
fn slowloris(address: &str) -> [SlowClient; 2] {
    let every = Duration::from_millis(1500);
    [
        SlowClient::connect(address, b"", &[b'G'; 100], every),
        SlowClient::connect(
            address,
            b"POST /bank HTTP/1.1\r\nContent-Length: 5\r\nX-Slow: ",
            &[b'a'; 100],
            every,
        ),
    ]
}

#[test]
fn slowloris_is_cut_at_the_deadline_while_status_answers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let deadline = Duration::from_secs(4);
    let listener = bare_listener(dir.path(), deadline);
    let address = listener.address().to_string();
    let (longest, ends) = status_latency_during(&address, || {
        slowloris(&address).map(|client| client.ended(Duration::from_secs(60)))
    });
    for (ended, answer) in ends {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(
            ended >= deadline - Duration::from_millis(50) && ended < deadline + Duration::from_millis(1500),
            "cut after {ended:?}, the deadline is {deadline:?}"
        );
    }
    assert!(longest < Duration::from_secs(1), "GET /status took {longest:?}");
}

#[test]
fn three_slow_clients_delay_neither_status_nor_stop() {
    let dir = tempfile::tempdir().unwrap();
    let listener = bare_listener(dir.path(), DEADLINE);
    let address = listener.address().to_string();
    let every = Duration::from_secs(2);
    let slow: Vec<SlowClient> = (0..3)
        .map(|_| {
            let stream = connect_from(Ipv4Addr::new(127, 0, 0, 2), &address);
            SlowClient::on(stream, b"GET /status HTTP/1.1\r\nX: ", &[b'a'; 100], every)
        })
        .collect();
    let (longest, ()) = status_latency_during(&address, || std::thread::sleep(Duration::from_secs(3)));
    assert!(longest < Duration::from_secs(1), "GET /status took {longest:?}");

    let stopping = Instant::now();
    listener.stop();
    let stopped = stopping.elapsed();
    assert!(stopped < Duration::from_secs(1), "stop took {stopped:?}");
    for client in slow {
        let (ended, _) = client.ended(Duration::from_secs(10));
        assert!(ended < Duration::from_secs(8), "a slow client was kept for {ended:?}");
    }
    assert!(client::status(&address).is_err(), "nothing listens after stop");
}

/// A connection to `address` from `source`, another loopback address, as a client elsewhere
/// on the network would have.
fn connect_from(source: Ipv4Addr, address: &str) -> TcpStream {
    let sockaddr = |address: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*address.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let to = sockaddr(address.parse().unwrap());
    let from = sockaddr(SocketAddrV4::new(source, 0));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, owned by the stream from here on; the addresses outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let bound = libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), len);
        assert_eq!(bound, 0, "bind {source}: {}", std::io::Error::last_os_error());
        let connected = libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), len);
        assert_eq!(connected, 0, "connect {address}: {}", std::io::Error::last_os_error());
        stream
    }
}

/// A connection that sends the start of a request, then nothing.
fn silent(source: Ipv4Addr, address: &str) -> TcpStream {
    let mut stream = connect_from(source, address);
    stream.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    stream
}

/// The answer on a connection, within `limit`.
fn answer_on(mut stream: &TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn three_silent_connections_from_one_address_do_not_keep_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let listener = bare_listener(dir.path(), DEADLINE);
    let address = listener.address().to_string();
    let peer = Ipv4Addr::new(127, 0, 0, 2);
    let held: Vec<TcpStream> = (0..3).map(|_| silent(peer, &address)).collect();
    // The same address asks for its status: it takes the place of its oldest silent connection.
    let asked = Instant::now();
    let mut status = connect_from(peer, &address);
    status.write_all(b"GET /status HTTP/1.1\r\n\r\n").unwrap();
    let answer = answer_on(&status, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "answered after {:?}",
        asked.elapsed()
    );
    let cut = answer_on(&held[0], Duration::from_secs(5));
    assert!(cut.starts_with("HTTP/1.1 503"), "the oldest silent one is cut: {cut:?}");
    assert_eq!(
        client::status(&address).unwrap().status,
        200,
        "another address is served"
    );
}

#[test]
fn eight_silent_clients_keep_no_one_out_and_the_oldest_is_cut_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let listener = bare_listener(dir.path(), DEADLINE);
    let address = listener.address().to_string();
    // Eight at a time from four addresses, opened again as they are cut, for 3 s.
    let peers: Vec<Ipv4Addr> = (2..6).map(|last| Ipv4Addr::new(127, 0, 0, last)).collect();
    let mut held: Vec<TcpStream> = (0..8).map(|i| silent(peers[i % 4], &address)).collect();
    let first = held.remove(0);
    let (longest, cut) = status_latency_during(&address, || {
        let mut cut = Vec::new();
        for round in 0..30 {
            held.retain(|stream| {
                let answer = answer_on(stream, Duration::from_millis(1));
                cut.extend(answer.starts_with("HTTP/1.1 503").then_some(()));
                answer.is_empty()
            });
            while held.len() < 8 {
                held.push(silent(peers[(round + held.len()) % 4], &address));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cut.len()
    });
    assert!(longest < Duration::from_secs(1), "GET /status took {longest:?}");
    assert!(cut > 0, "no silent client was cut to make room");
    let answer = answer_on(&first, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 503"), "the oldest was not cut: {answer:?}");
}

/// Sends a `POST /bank` head with a body of `length` bytes, and `sent` of them.
fn post_start(source: Ipv4Addr, address: &str, length: usize, sent: usize) -> TcpStream {
    let mut stream = connect_from(source, address);
    write!(stream, "POST /bank HTTP/1.1\r\nContent-Length: {length}\r\n\r\n").unwrap();
    stream.write_all(&vec![b'x'; sent]).unwrap();
    stream
}

#[test]
fn a_second_body_is_not_read_until_the_first_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let listener = bare_listener(dir.path(), DEADLINE);
    let address = listener.address().to_string();
    let length = 100 << 10;
    let mut first = post_start(Ipv4Addr::new(127, 0, 0, 2), &address, length, 10);
    std::thread::sleep(Duration::from_millis(200));
    let second = post_start(Ipv4Addr::new(127, 0, 0, 3), &address, length, length);
    assert_eq!(
        answer_on(&second, Duration::from_secs(1)),
        "",
        "the second body was read while the first was being received"
    );
    first.write_all(&vec![b'x'; length - 10]).unwrap();
    let answer = answer_on(&first, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let answer = answer_on(&second, Duration::from_secs(5));
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "the second is read after the first: {answer:?}"
    );
}

#[test]
fn a_content_length_must_be_one_decimal_number() {
    let dir = tempfile::tempdir().unwrap();
    let listener = bare_listener(dir.path(), Duration::from_secs(5));
    let address = listener.address().to_string();
    let answer = |request: &str| {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    // A request that would be answered 200 with either reading of its length.
    for lengths in [
        "Content-Length: 0\r\nContent-Length: 5",
        "Content-Length: +5",
        "Content-Length: 5x",
    ] {
        let got = answer(&format!("GET /status HTTP/1.1\r\n{lengths}\r\n\r\nabcde"));
        assert!(got.starts_with("HTTP/1.1 400"), "{lengths:?}: {got}");
    }
    let same_twice = answer("GET /status HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n");
    assert!(same_twice.starts_with("HTTP/1.1 200"), "{same_twice}");
}

#[test]
fn a_device_cuts_a_slow_client_at_the_default_deadline_and_ends_its_frames_regardless() {
    let device = Device::new();
    // The real deadline on `ucad run`: a header line trickled every 3 s for two minutes.
    let mut child = device.start();
    let every = Duration::from_secs(3);
    let (longest, (ended, answer)) = status_latency_during(&device.address, || {
        SlowClient::connect(&device.address, b"GET /status HTTP/1.1\r\nX: ", &[b'a'; 40], every)
            .ended(Duration::from_secs(120))
    });
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        ended >= DEADLINE - Duration::from_millis(50) && ended < DEADLINE + Duration::from_secs(2),
        "cut after {ended:?}"
    );
    assert!(longest < Duration::from_secs(1), "GET /status took {longest:?}");
    child.kill().unwrap();
    child.wait().unwrap();

    // The end of --frames with a slow client connected: the process exits, summary and all.
    let mut child = device.start_with(&["--frames", "40"]);
    let slow = SlowClient::connect(&device.address, b"GET /status HTTP/1.1\r\nX: ", &[b'a'; 40], every);
    let waiting = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(20),
            "ucad run did not end with a slow client connected"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    let (ended, _) = slow.ended(Duration::from_secs(10));
    assert!(
        ended < Duration::from_secs(25),
        "the slow client was kept for {ended:?}"
    );
}

#[test]
fn the_update_section_is_checked_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = device_config(Path::new("tiny.onnx"), "127.0.0.1:1");
    let path = dir.path().join("device.toml");
    let refusal = |text: String| {
        std::fs::write(&path, text).unwrap();
        format!("{:#}", ucad::runtime::config::RunConfig::load(&path).unwrap_err())
    };
    let err = refusal(base.replace(&format!("line = \"{LINE}\"\n"), ""));
    assert!(err.contains("line") && err.contains("device.toml"), "{err}");
    let err = refusal(base.replace(&format!("line = \"{LINE}\""), "line = \"hall 2\""));
    assert!(err.contains("line") && err.contains("hall 2"), "{err}");
    for max in ["0", "1025", "1000000000000"] {
        let err = refusal(base.replace("max_mib = 1", &format!("max_mib = {max}")));
        assert!(err.contains("update.max_mib") && err.contains("1024"), "{max}: {err}");
    }
    let listen = "listen = \"127.0.0.1:1\"\n";
    let err = refusal(base.replace(listen, ""));
    assert!(err.contains("needs `listen`") && err.contains("`source`"), "{err}");
    for url in [
        "ftp://h/manifest",
        "http://h",
        "http://h/line-a/",
        "http:///manifest",
        "http://h:99999/manifest",
        "http://h/manifest?token=1/2",
        "http://h/manifest#x",
        "manifest",
    ] {
        let err = refusal(base.replace(listen, &format!("source = {url:?}\n")));
        assert!(err.contains("update.source") && err.contains(url), "{url}: {err}");
    }
    let pulling = base.replace(listen, "source = \"http://h:1/line-a/manifest\"\n");
    let err = refusal(pulling.clone() + "ca_file = \"ca.pem\"\n");
    assert!(err.contains("update.ca_file is for an https://"), "{err}");
    for poll in ["0", "0.01", "90000"] {
        let err = refusal(pulling.clone() + &format!("poll_s = {poll}\n"));
        assert!(err.contains("update.poll_s"), "{poll}: {err}");
    }
    let err = refusal(pulling + "fetch_timeout_s = -1\n");
    assert!(err.contains("fetch_timeout_s"), "{err}");
}
