//! The device's side of over-the-air updates, part of `ucad run`: an HTTP listener that takes a
//! signed bank (`POST /bank`), refuses anything not signed by a trusted key, damaged, for
//! another backbone, beyond the device's capacity or not newer than the installed bank, installs
//! the rest atomically and hands it to the loop between two frames; `GET /status` reports the
//! installed bank and the loop's counters.

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwapOption;
use ed25519_dalek::VerifyingKey;
use log::{info, warn};
use serde_json::json;

use super::http;
use super::signing::SignedUpdate;
use super::store::{BankStore, Origin};
use crate::bank::{Bank, BankError, Capacity};
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

/// What an update must satisfy on this device.
pub struct UpdatePolicy {
    pub trusted: Vec<VerifyingKey>,
    pub backbone_sha256: String,
    pub capacity: Capacity,
    pub max_bytes: usize,
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

/// Everything short of installing (what the fuzz target drives): envelope, signature, bank
/// file, backbone, capacity, anti-rollback. Returns the bank and its file's bytes. Never
/// panics, whatever the bytes.
pub fn validate<'a>(
    body: &'a [u8],
    policy: &UpdatePolicy,
    installed_version: Option<u64>,
) -> Result<(Bank, &'a [u8]), Refusal> {
    if body.len() > policy.max_bytes {
        return Err(refuse(
            413,
            format!("{} bytes, at most {} accepted", body.len(), policy.max_bytes),
        ));
    }
    let update = SignedUpdate::parse(body).map_err(|e| refuse(400, e))?;
    update.verify(&policy.trusted).map_err(|e| refuse(403, e))?;
    let bank = Bank::from_bytes(update.bank, "pushed bank").map_err(|e| match e {
        BankError::NewerFormat { .. } | BankError::OlderFormat { .. } => refuse(422, e),
        _ => refuse(400, e),
    })?;
    bank.check_backbone(&policy.backbone_sha256, "pushed bank")
        .and_then(|()| bank.check_capacity(policy.capacity, "pushed bank"))
        .map_err(|e| refuse(422, e))?;
    if bank.tasks.is_empty() {
        return Err(refuse(422, "the pushed bank has no tasks"));
    }
    if let Some(installed) = installed_version.filter(|v| bank.version <= *v) {
        return Err(refuse(
            409,
            format!(
                "bank version {} is not newer than the installed version {installed}",
                bank.version
            ),
        ));
    }
    Ok((bank, update.bank))
}

pub struct UpdateListener {
    address: std::net::SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("ucad-updates".into())
            .spawn(move || {
                // One connection at a time: an update is rare, and each waits at most DEADLINE.
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    match stream {
                        Ok(stream) => serve(stream, &policy, &store, &state),
                        Err(e) => warn!("update listener: {e}"),
                    }
                }
            })
            .context("cannot start the update listener")?;
        info!("listening for signed bank updates on {address}");
        Ok(UpdateListener {
            address,
            stopping,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, policy: &UpdatePolicy, store: &BankStore, state: &DeviceState) {
    let deadline = Instant::now() + http::DEADLINE;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let (status, body) = match http::read_request(&mut reader, policy.max_bytes, deadline) {
        Ok(request) => answer(&request, policy, store, state),
        Err(refusal) => refused(refusal),
    };
    if let Err(e) = http::write_response(&mut &stream, status, &body.to_string()) {
        warn!("update listener: cannot answer: {e}");
    }
}

fn refused(refusal: Refusal) -> (u16, serde_json::Value) {
    warn!("update request refused ({}): {}", refusal.status, refusal.message);
    (refusal.status, json!({"ok": false, "error": refusal.message}))
}

fn answer(
    request: &http::HttpRequest,
    policy: &UpdatePolicy,
    store: &BankStore,
    state: &DeviceState,
) -> (u16, serde_json::Value) {
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/bank") => match install(&request.body, policy, store, state) {
            Ok(installed) => (200, json!({"ok": true, "installed": installed})),
            Err(refusal) => refused(refusal),
        },
        ("GET", "/status") => (200, status(state)),
        (method, path) => (404, json!({"ok": false, "error": format!("no {method} {path} here")})),
    }
}

fn install(
    body: &[u8],
    policy: &UpdatePolicy,
    store: &BankStore,
    state: &DeviceState,
) -> Result<serde_json::Value, Refusal> {
    let installed_version = state.installed.load().as_ref().map(|i| i.version);
    let (bank, bank_bytes) = validate(body, policy, installed_version)?;
    let detector = Detector::new(&bank).map_err(|e| refuse(422, format!("{e:#}")))?;
    store
        .install(bank_bytes)
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
