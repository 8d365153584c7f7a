//! A device on the tiny backbone (its files, config, `ucad run`, status) and the clients that
//! talk to it, for the tests that run the update listener.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ucad::bank::Bank;
use ucad::update::client;
use ucad::update::signing::{sign, write_key_pair, Line};

/// A device's `ucad run`, killed when dropped: a test that fails before it stops the device
/// leaves no process running (one would load the cores under the timing tests that follow).
pub struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Already ended (the test stopped it) or not: either way nothing is left running.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The line the test devices are on.
pub const LINE: &str = "line-a";

pub fn line(name: &str) -> Line {
    Line::new(name).unwrap()
}

/// A device's files: backbone, bank, frames, trusted key, config.
pub struct Device {
    pub dir: tempfile::TempDir,
    pub product: super::TinyProduct,
    pub key: SigningKey,
    pub config: PathBuf,
    pub address: String,
}

impl Device {
    pub fn new() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let product = super::TinyProduct::new(dir.path());
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

    pub fn bank_path(&self) -> PathBuf {
        self.dir.path().join("bank.ucad")
    }

    pub fn signed(&self, bank: &Bank) -> Vec<u8> {
        sign(&bank.to_bytes(), &line(LINE), &self.key)
    }

    /// `ucad run` on this device's config, answering status requests.
    pub fn start(&self) -> Running {
        self.start_with(&[])
    }

    pub fn start_with(&self, args: &[&str]) -> Running {
        let child = Command::new(env!("CARGO_BIN_EXE_ucad"))
            .args(["run", "--config"])
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let running = Running(child);
        wait_for_listener(&self.address);
        running
    }

    pub fn status(&self) -> serde_json::Value {
        let answer = client::status(&self.address).unwrap();
        assert_eq!(answer.status, 200);
        serde_json::from_str(&answer.body).unwrap()
    }

    /// Waits (at most a minute) until `done` holds for this device's status, and returns it.
    pub fn status_when(&self, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{what}: {status:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn installed_version(&self) -> u64 {
        self.status()["bank"]["version"].as_u64().unwrap()
    }
}

pub fn device_config(backbone: &Path, address: &str) -> String {
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
stall_ms = 1000.0
[memory]
frame_pool_mib = 16
[update]
listen = "{address}"
trusted_keys = ["line.key.pub"]
line = "{LINE}"
max_mib = 1
"#,
        backbone.display()
    )
}

pub fn wait_for_listener(address: &str) {
    let start = Instant::now();
    while client::status(address).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "{address} does not answer");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client that sends `head` at once, then `trickle` one byte every `every`.
pub struct SlowClient {
    stream: TcpStream,
    connected: Instant,
    sender: std::thread::JoinHandle<()>,
}

impl SlowClient {
    pub fn connect(address: &str, head: &[u8], trickle: &[u8], every: Duration) -> SlowClient {
        SlowClient::on(TcpStream::connect(address).unwrap(), head, trickle, every)
    }

    /// The same on a connection of the caller's.
    pub fn on(stream: TcpStream, head: &[u8], trickle: &[u8], every: Duration) -> SlowClient {
        let connected = Instant::now();
        let mut writer = stream.try_clone().unwrap();
        let (head, trickle) = (head.to_vec(), trickle.to_vec());
        let sender = std::thread::spawn(move || {
            let _ = writer.write_all(&head);
            for byte in trickle {
                std::thread::sleep(every);
                if writer.write_all(&[byte]).is_err() {
                    break;
                }
            }
        });
        SlowClient {
            stream,
            connected,
            sender,
        }
    }

    /// Waits (at most `limit`) for the listener to end the connection: when, after connecting,
    /// and what it answered.
    pub fn ended(self, limit: Duration) -> (Duration, String) {
        let mut answer = Vec::new();
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let _ = (&self.stream).read_to_end(&mut answer);
        let ended = self.connected.elapsed();
        let _ = self.stream.shutdown(Shutdown::Both);
        self.sender.join().unwrap();
        (ended, String::from_utf8_lossy(&answer).into_owned())
    }
}
