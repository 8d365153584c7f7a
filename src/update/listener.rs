//! The device's side of over-the-air updates, part of `ucad run`: an HTTP listener that takes a
//! signed bank (`POST /bank`), refuses anything not signed by a trusted key for this device's
//! line, damaged, for another backbone, beyond the device's capacity or not newer than every
//! bank installed before, installs the rest atomically and hands it to the loop between two
//! frames; `GET /status` reports the installed bank and the loop's counters.
//!
//! Up to `MAX_CONNECTIONS` requests are served at once, each on its own thread and within the
//! request deadline, so that slow clients delay nobody; one more is answered 503 at once.
//! Stopping cuts the connections being served and never waits on a client.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwapOption;
use ed25519_dalek::VerifyingKey;
use log::{info, warn};
use serde_json::json;

use super::http;
use super::signing::{Line, SignedUpdate};
use super::store::{BankStore, Origin};
use crate::bank::{BackboneSpec, Bank, BankError, Capacity};
use crate::detect::Detector;
use crate::runtime::counters::Totals;

/// A bank ready to judge frames with.
pub struct Installed {
    pub detector: Detector,
    pub version: u64,
    pub origin: Origin,
}

/// What the loop and the listener share.
#[derive(Default)]
pub struct DeviceState {
    /// The bank the next frame is judged with (swapped whole, between frames).
    pub installed: ArcSwapOption<Installed>,
    /// The loop's counters, published after every frame.
    pub totals: Mutex<Totals>,
    /// The last bank the loop sent back to the last-known-good one, and why.
    pub demoted: Mutex<Option<Demotion>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Demotion {
    pub version: u64,
    pub reason: String,
}

/// What an update must satisfy on this device, and how long a request may take.
pub struct UpdatePolicy {
    pub trusted: Vec<VerifyingKey>,
    /// The line (or device group) this device is on: updates signed for another are refused.
    pub line: Line,
    pub backbone: BackboneSpec,
    pub capacity: Capacity,
    pub max_bytes: usize,
    /// The whole request, head and body, must arrive within this (`http::DEADLINE` on a device).
    pub request_deadline: Duration,
}

/// Why an update was refused, with the HTTP status the pusher gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn refuse(status: u16, message: impl ToString) -> Refusal {
    Refusal {
        status,
        message: message.to_string(),
    }
}

/// Everything short of installing (what the fuzz target drives): envelope, signature, line,
/// bank file, backbone, capacity, anti-rollback (the bank must be newer than
/// `highest_installed`, 0 on a device that never had one). Returns the bank and its file's
/// bytes. Never panics, whatever the bytes.
pub fn validate<'a>(
    body: &'a [u8],
    policy: &UpdatePolicy,
    highest_installed: u64,
) -> Result<(Bank, &'a [u8]), Refusal> {
    if body.len() > policy.max_bytes {
        return Err(refuse(
            413,
            format!("{} bytes, at most {} accepted", body.len(), policy.max_bytes),
        ));
    }
    let update = SignedUpdate::parse(body).map_err(|e| refuse(400, e))?;
    update.verify(&policy.trusted).map_err(|e| refuse(403, e))?;
    if update.line != policy.line {
        return Err(refuse(
            403,
            format!(
                "the update is signed for line {}, this device is on line {}",
                update.line, policy.line
            ),
        ));
    }
    let bank = Bank::from_bytes(update.bank, "pushed bank").map_err(|e| match e {
        BankError::NewerFormat { .. } | BankError::OlderFormat { .. } | BankError::Invalid { .. } => refuse(422, e),
        _ => refuse(400, e),
    })?;
    bank.check_backbone(&policy.backbone, "pushed bank")
        .and_then(|()| bank.check_capacity(policy.capacity, "pushed bank"))
        .map_err(|e| refuse(422, e))?;
    if bank.tasks.is_empty() {
        return Err(refuse(422, "the pushed bank has no tasks"));
    }
    if bank.version <= highest_installed {
        return Err(refuse(
            409,
            format!(
                "bank version {} is not newer than version {highest_installed}, the highest installed on this \
                 device: no rollback",
                bank.version
            ),
        ));
    }
    Ok((bank, update.bank))
}

/// Requests served at once.
const MAX_CONNECTIONS: usize = 8;
/// An answer (a few hundred bytes) must be taken within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct UpdateListener {
    address: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the listener's threads share.
struct Shared {
    policy: UpdatePolicy,
    /// Held for a whole install: one version check and install at a time.
    store: Mutex<BankStore>,
    state: Arc<DeviceState>,
    connections: Mutex<Connections>,
}

/// The connections being served, each in a slot, so that stopping can cut them.
struct Connections {
    stopping: bool,
    slots: Vec<Option<TcpStream>>,
}

enum Admission {
    Slot(usize),
    Busy,
    Stopping,
}

impl Shared {
    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self, stream: &TcpStream) -> Admission {
        let mut connections = self.connections();
        if connections.stopping {
            return Admission::Stopping;
        }
        let Some(slot) = connections.slots.iter().position(Option::is_none) else {
            return Admission::Busy;
        };
        match stream.try_clone() {
            Ok(handle) => {
                connections.slots[slot] = Some(handle);
                Admission::Slot(slot)
            }
            Err(e) => {
                warn!("update listener: {e}");
                Admission::Busy
            }
        }
    }

    /// Refuses new connections and cuts the ones being served: their reads end at once.
    fn close_all(&self) {
        let mut connections = self.connections();
        connections.stopping = true;
        for stream in connections.slots.iter().flatten() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// A connection's slot, given back when its thread ends, however it ends.
struct SlotGuard {
    shared: Arc<Shared>,
    slot: usize,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.shared.connections().slots[self.slot] = None;
    }
}

impl UpdateListener {
    pub fn start(
        listen: &str,
        policy: UpdatePolicy,
        store: BankStore,
        state: Arc<DeviceState>,
    ) -> Result<UpdateListener> {
        let listener = TcpListener::bind(listen).with_context(|| format!("cannot listen for updates on {listen}"))?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            policy,
            store: Mutex::new(store),
            state,
            connections: Mutex::new(Connections {
                stopping: false,
                slots: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            }),
        });
        let accepting = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ucad-updates".into())
            .spawn(move || accept(&listener, &accepting))
            .context("cannot start the update listener")?;
        info!("listening for signed bank updates on {address}");
        Ok(UpdateListener {
            address,
            shared,
            thread: Some(thread),
        })
    }

    /// Where it listens (the port the system chose, for `ADDR:0`).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops listening and cuts the connections being served; never waits on a client. (Also
    /// what dropping the listener does.)
    pub fn stop(self) {}
}

impl Drop for UpdateListener {
    fn drop(&mut self) {
        self.shared.close_all();
        // Wake the blocking accept; should that fail, it ends at the next connection instead.
        let mut wake = self.address;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        match TcpStream::connect_timeout(&wake, Duration::from_millis(500)) {
            Ok(_) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
            Err(e) => warn!("update listener: cannot wake it to stop ({e}); it stops at the next connection"),
        }
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors, say: try again shortly, without spinning.
                warn!("update listener: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        match shared.admit(&stream) {
            Admission::Stopping => break,
            Admission::Busy => {
                let message = format!("busy: {MAX_CONNECTIONS} requests are being served; try again");
                respond(&stream, refused(refuse(503, message)));
            }
            Admission::Slot(slot) => {
                let guard = SlotGuard {
                    shared: shared.clone(),
                    slot,
                };
                let spawned = std::thread::Builder::new()
                    .name("ucad-update-request".into())
                    .spawn(move || serve(&stream, &guard.shared));
                if let Err(e) = spawned {
                    warn!("update listener: cannot serve a connection: {e}");
                }
            }
        }
    }
}

fn serve(stream: &TcpStream, shared: &Shared) {
    let deadline = Instant::now() + shared.policy.request_deadline;
    let answer = match http::read_request(&mut &*stream, shared.policy.max_bytes, deadline) {
        Ok(request) => answer(&request, shared),
        Err(refusal) => refused(refusal),
    };
    respond(stream, answer);
}

fn respond(stream: &TcpStream, (status, body): (u16, serde_json::Value)) {
    let written = stream
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .and_then(|()| http::write_response(&mut &*stream, status, &body.to_string()));
    if let Err(e) = written {
        warn!("update listener: cannot answer: {e}");
    }
}

fn refused(refusal: Refusal) -> (u16, serde_json::Value) {
    warn!("update request refused ({}): {}", refusal.status, refusal.message);
    (refusal.status, json!({"ok": false, "error": refusal.message}))
}

fn answer(request: &http::HttpRequest, shared: &Shared) -> (u16, serde_json::Value) {
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/bank") => match install(&request.body, shared) {
            Ok(installed) => (200, json!({"ok": true, "installed": installed})),
            Err(refusal) => refused(refusal),
        },
        ("GET", "/status") => (200, status(&shared.state)),
        (method, path) => (404, json!({"ok": false, "error": format!("no {method} {path} here")})),
    }
}

fn install(body: &[u8], shared: &Shared) -> Result<serde_json::Value, Refusal> {
    let store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
    let state = &shared.state;
    let running = state.installed.load().as_ref().map_or(0, |i| i.version);
    let highest = store
        .highest_installed()
        .map_err(|e| refuse(500, format!("{e:#}")))?
        .max(running);
    let (bank, bank_bytes) = validate(body, &shared.policy, highest)?;
    let detector = Detector::new(&bank).map_err(|e| refuse(422, format!("{e:#}")))?;
    store
        .install(bank_bytes, bank.version)
        .map_err(|e| refuse(500, format!("cannot install: {e:#}")))?;
    let summary = bank_summary(&bank);
    state.installed.store(Some(Arc::new(Installed {
        detector,
        version: bank.version,
        origin: Origin::Pushed,
    })));
    info!("bank version {} installed: {summary}", bank.version);
    Ok(summary)
}

fn bank_summary(bank: &Bank) -> serde_json::Value {
    json!({
        "version": bank.version,
        "tasks": bank.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
    })
}

fn status(state: &DeviceState) -> serde_json::Value {
    let totals = *state.totals.lock().unwrap_or_else(|e| e.into_inner());
    let bank = state.installed.load().as_ref().map(|i| {
        json!({
            "version": i.version,
            "origin": i.origin,
            "tasks": i.detector.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        })
    });
    let demoted = state.demoted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    json!({"bank": bank, "totals": totals, "demoted": demoted})
}
