//! Pull updates against a real web server (Python's `http.server` on 127.0.0.1): `ucad publish`
//! writes the folder it serves; `ucad run` devices with `[update] source` poll it. Three devices
//! converge to a newly published bank; a replayed older manifest, an expired one, one for another
//! line, a bank longer than its manifest says and a server that stalls mid-body are each refused
//! while the loop runs, and nothing is installed.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::device::{free_port, line, Device, Running, LINE};
use ucad::bank::Bank;
use ucad::update::manifest::Manifest;

/// Python's `http.server` serving a folder on 127.0.0.1 (over TLS with a certificate and key),
/// killed when dropped.
struct WebServer {
    child: Child,
    url: String,
}

/// `http.server` behind TLS: the same handler, its socket wrapped.
const HTTPS_SERVER: &str = "import functools, http.server, ssl, sys
port, folder, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder)
server = http.server.ThreadingHTTPServer(('127.0.0.1', port), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
";

impl WebServer {
    fn serve(folder: &Path) -> WebServer {
        let port = free_port();
        let mut command = Command::new("python3");
        command.args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ]);
        command.arg(folder);
        WebServer::start(command, format!("http://127.0.0.1:{port}"), port)
    }

    fn serve_tls(folder: &Path, cert: &Path, key: &Path) -> WebServer {
        let port = free_port();
        let mut command = Command::new("python3");
        command
            .args(["-c", HTTPS_SERVER, &port.to_string()])
            .args([folder, cert, key]);
        WebServer::start(command, format!("https://127.0.0.1:{port}"), port)
    }

    fn start(mut command: Command, url: String, port: u16) -> WebServer {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (the tests need it, as `ucad models fetch` does)");
        let server = WebServer { child, url };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} does not answer",
                server.url
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points a test device at a manifest URL, polled every 200 ms, each fetch within `timeout_s`.
fn pull_from(device: &Device, url: &str, timeout_s: f64) {
    let mut config = std::fs::read_to_string(&device.config).unwrap();
    config.push_str(&format!(
        "source = \"{url}\"\npoll_s = 0.2\nfetch_timeout_s = {timeout_s}\n"
    ));
    std::fs::write(&device.config, config).unwrap();
}

/// `ucad publish` of a bank of the test product with `version`, for `line`, into `folder`.
fn publish(device: &Device, version: u64, line: &str, folder: &Path) {
    let out = publish_command(device, version, line, folder);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The same, refused: what it says.
fn publish_refused(device: &Device, version: u64, folder: &Path) -> String {
    let out = publish_command(device, version, LINE, folder);
    assert!(!out.status.success(), "published");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn publish_command(device: &Device, version: u64, line: &str, folder: &Path) -> std::process::Output {
    let bank = device.dir.path().join(format!("to-publish-{version}.ucad"));
    device.product.bank(0.1, version).save(&bank).unwrap();
    Command::new(env!("CARGO_BIN_EXE_ucad"))
        .args(["publish", "--line", line, "--bank"])
        .arg(&bank)
        .arg("--key")
        .arg(device.dir.path().join("line.key"))
        .arg("--out")
        .arg(folder)
        .arg("--backbone")
        .arg(&device.product.backbone)
        .output()
        .unwrap()
}

fn pull_outcome(status: &serde_json::Value) -> String {
    status["pull"]["outcome"].as_str().unwrap_or_default().to_string()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn three_devices_converge_to_a_newly_published_bank() {
    let folder = tempfile::tempdir().unwrap();
    let server = WebServer::serve(folder.path());
    let source = format!("{}/{LINE}/manifest", server.url);
    let devices: Vec<Device> = (0..3).map(|_| Device::new()).collect();
    for device in &devices {
        pull_from(device, &source, 10.0);
    }
    let running: Vec<Running> = devices.iter().map(Device::start).collect();
    for device in &devices {
        let status = device.status_when("the first check fails: nothing published", |s| {
            pull_outcome(s).contains("answered HTTP 404")
        });
        assert_eq!(status["bank"]["version"], 1);
    }
    publish(&devices[0], 2, LINE, &folder.path().join(LINE));
    for device in &devices {
        let status = device.status_when("installs version 2", |s| s["bank"]["version"] == 2);
        assert_eq!(status["bank"]["origin"], "pulled");
        device.status_when("then finds itself up to date", |s| {
            pull_outcome(s) == "up to date (bank version 2)"
        });
        assert_eq!(Bank::load(&device.bank_path()).unwrap().version, 2, "installed on disk");
    }
    drop(running);
}

/// A device on version 3 from `folder`, and the frames it has judged so far.
fn on_version_3(device: &Device, folder: &Path) -> u64 {
    publish(device, 3, LINE, folder);
    device.status_when("installs version 3", |s| s["bank"]["version"] == 3)["totals"]["frames"]
        .as_u64()
        .unwrap()
}

/// Waits for the next check to refuse with `says`, then checks that version 3 still runs (and
/// is the one on disk) and that frames went on meanwhile.
fn refused_while_running(device: &Device, frames_before: u64, says: &str) -> u64 {
    let status = device.status_when(says, |s| pull_outcome(s).contains(says));
    assert_eq!(status["bank"]["version"], 3, "{says}: nothing installed");
    assert_eq!(
        Bank::load(&device.bank_path()).unwrap().version,
        3,
        "{says}: nothing on disk"
    );
    let frames = status["totals"]["frames"].as_u64().unwrap();
    assert!(frames > frames_before, "{says}: the loop runs ({frames} frames)");
    assert!(status["pull"]["refused"].as_u64().unwrap() > 0, "{says}: counted");
    frames
}

#[test]
fn replayed_expired_foreign_and_oversized_manifests_are_refused_with_the_loop_running() {
    let folder = tempfile::tempdir().unwrap();
    let server = WebServer::serve(folder.path());
    let device = Device::new();
    pull_from(&device, &format!("{}/manifest", server.url), 10.0);
    let _running = device.start();
    publish(&device, 2, LINE, folder.path());
    device.status_when("installs version 2", |s| s["bank"]["version"] == 2);
    let version_2 = std::fs::read(folder.path().join("manifest")).unwrap();
    let mut frames = on_version_3(&device, folder.path());
    let err = publish_refused(&device, 2, folder.path());
    assert!(err.contains("already publishes bank version 3"), "{err}");

    std::fs::write(folder.path().join("manifest"), &version_2).unwrap();
    frames = refused_while_running(&device, frames, "a replayed or stale manifest");

    let key = ucad::update::signing::read_secret_key(&device.dir.path().join("line.key")).unwrap();
    let bank_4 = device.dir.path().join("bank-4.ucad");
    device.product.bank(0.1, 4).save(&bank_4).unwrap();
    let bytes = std::fs::read(&bank_4).unwrap();
    std::fs::copy(&bank_4, folder.path().join("bank-v4.ucad")).unwrap();
    let manifest = Manifest {
        line: line(LINE),
        version: 4,
        bank: "bank-v4.ucad".into(),
        size: bytes.len() as u64,
        sha256: ucad::fsutil::sha256_file(&bank_4).unwrap(),
        issued_unix: unix_now() - 100,
        expires_unix: unix_now() - 10,
    };
    let serve = |m: &Manifest| std::fs::write(folder.path().join("manifest"), m.sign(&key).unwrap()).unwrap();
    serve(&manifest);
    frames = refused_while_running(&device, frames, "expired");

    publish(&device, 4, "line-b", folder.path());
    frames = refused_while_running(&device, frames, "published for line line-b");

    // A bank longer than its manifest says: the server announces its length, more than the bound.
    let short = Manifest {
        size: bytes.len() as u64 - 100,
        expires_unix: unix_now() + 3600,
        ..manifest.clone()
    };
    serve(&short);
    frames = refused_while_running(&device, frames, "announced, at most");

    // A bank whose bytes are not the signed ones.
    let mut damaged = bytes.clone();
    damaged[bytes.len() / 2] ^= 1;
    std::fs::write(folder.path().join("bank-v4.ucad"), &damaged).unwrap();
    serve(&Manifest {
        expires_unix: unix_now() + 3600,
        ..manifest.clone()
    });
    refused_while_running(&device, frames, "the manifest says");

    // And the same manifest with the right bank is installed.
    std::fs::write(folder.path().join("bank-v4.ucad"), &bytes).unwrap();
    device.status_when("installs version 4", |s| s["bank"]["version"] == 4);
}

/// A plant's own CA (`ca.pem`) and a server certificate for 127.0.0.1 it signed, made by openssl.
fn plant_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let ca = [
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=plant CA",
    ];
    openssl(&[&["req", "-x509"][..], &ec, &ca].concat());
    let server = ["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"];
    openssl(&[&["req"][..], &ec, &server].concat());
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

#[test]
fn an_https_source_is_trusted_through_the_plants_ca_only() {
    let certificates = tempfile::tempdir().unwrap();
    let (ca, cert, key) = plant_ca(certificates.path());
    let folder = tempfile::tempdir().unwrap();
    let server = WebServer::serve_tls(folder.path(), &cert, &key);
    let source = format!("{}/manifest", server.url);
    let (trusting, public) = (Device::new(), Device::new());
    pull_from(&trusting, &source, 10.0);
    let mut config = std::fs::read_to_string(&trusting.config).unwrap();
    config.push_str(&format!("ca_file = {:?}\n", ca.display().to_string()));
    std::fs::write(&trusting.config, config).unwrap();
    pull_from(&public, &source, 10.0);
    let _running = (trusting.start(), public.start());
    publish(&trusting, 2, LINE, folder.path());
    let status = trusting.status_when("installs version 2 over HTTPS", |s| s["bank"]["version"] == 2);
    assert_eq!(status["bank"]["origin"], "pulled");
    let status = public.status_when("refuses the plant's certificate", |s| {
        pull_outcome(s).contains("failed")
    });
    assert!(
        pull_outcome(&status).to_lowercase().contains("certificate"),
        "{status:#}"
    );
    assert_eq!(status["bank"]["version"], 1);
}

/// A server that answers the manifest whole, then sends half the bank and stops sending.
fn stalling_server(manifest: Vec<u8>, bank_len: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/manifest", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let manifest = manifest.clone();
            std::thread::spawn(move || {
                let mut head = [0u8; 4096];
                let n = stream.read(&mut head).unwrap_or(0);
                let asks_manifest = String::from_utf8_lossy(&head[..n]).starts_with("GET /manifest ");
                let (length, body) = match asks_manifest {
                    true => (manifest.len(), manifest),
                    false => (bank_len, vec![0u8; bank_len / 2]),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(&body);
                std::thread::sleep(Duration::from_secs(30));
            });
        }
    });
    url
}

#[test]
fn a_server_that_stalls_mid_body_is_given_up_at_the_fetch_timeout() {
    let device = Device::new();
    let bank_2 = device.dir.path().join("bank-2.ucad");
    device.product.bank(0.1, 2).save(&bank_2).unwrap();
    let size = std::fs::metadata(&bank_2).unwrap().len();
    let manifest = Manifest {
        line: line(LINE),
        version: 2,
        bank: "bank-v2.ucad".into(),
        size,
        sha256: ucad::fsutil::sha256_file(&bank_2).unwrap(),
        issued_unix: unix_now(),
        expires_unix: unix_now() + 3600,
    };
    let key = ucad::update::signing::read_secret_key(&device.dir.path().join("line.key")).unwrap();
    let url = stalling_server(manifest.sign(&key).unwrap().into_bytes(), size as usize);
    pull_from(&device, &url, 1.0);
    let _running = device.start();
    let started = Instant::now();
    let status = device.status_when("the stalled fetch fails", |s| {
        pull_outcome(s).contains("the body stopped coming")
    });
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert_eq!(status["bank"]["version"], 1, "nothing installed");
    assert!(status["pull"]["failed"].as_u64().unwrap() > 0);
    let frames = status["totals"]["frames"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        device.status()["totals"]["frames"].as_u64().unwrap() > frames,
        "the loop runs"
    );
}
