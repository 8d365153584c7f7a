//! The device's side of over-the-air updates, part of `ucad run`: an HTTP listener that takes a
//! signed bank (`POST /bank`), refuses anything not signed by a trusted key, damaged, for
//! another backbone, beyond the device's capacity or not newer than the installed bank, installs
//! the rest atomically and hands it to the loop between two frames; `GET /status` reports the
//! installed bank and the loop's counters.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use arc_swap::ArcSwapOption;
use ed25519_dalek::VerifyingKey;
use log::{info, warn};
use serde_json::json;
use tiny_http::{Header, Method, Request, Response, Server};

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
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    pub address: String,
}

impl UpdateListener {
    pub fn start(
        listen: &str,
        policy: UpdatePolicy,
        store: BankStore,
        state: Arc<DeviceState>,
    ) -> Result<UpdateListener> {
        let server = Server::http(listen).map_err(|e| anyhow::anyhow!("cannot listen for updates on {listen}: {e}"))?;
        let server = Arc::new(server);
        let address = server.server_addr().to_string();
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("ucad-updates".into())
            .spawn(move || {
                for mut request in serving.incoming_requests() {
                    let (status, body) = answer(&mut request, &policy, &store, &state);
                    let json = Header::from_bytes("Content-Type", "application/json").expect("a valid header");
                    let response = Response::from_string(body.to_string())
                        .with_status_code(status)
                        .with_header(json);
                    if let Err(e) = request.respond(response) {
                        warn!("update listener: cannot answer: {e}");
                    }
                }
            })
            .context("cannot start the update listener")?;
        info!("listening for signed bank updates on {address}");
        Ok(UpdateListener {
            server,
            thread: Some(thread),
            address,
        })
    }

    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(
    request: &mut Request,
    policy: &UpdatePolicy,
    store: &BankStore,
    state: &DeviceState,
) -> (u16, serde_json::Value) {
    match (request.method(), request.url()) {
        (Method::Post, "/bank") => {
            match read_body(request, policy.max_bytes).and_then(|b| install(&b, policy, store, state)) {
                Ok(installed) => (200, json!({"ok": true, "installed": installed})),
                Err(refusal) => {
                    warn!("bank update refused ({}): {}", refusal.status, refusal.message);
                    (refusal.status, json!({"ok": false, "error": refusal.message}))
                }
            }
        }
        (Method::Get, "/status") => (200, status(state)),
        (method, url) => (404, json!({"ok": false, "error": format!("no {method} {url} here")})),
    }
}

/// The request body, refusing more than `max` bytes without reading them all.
fn read_body(request: &mut Request, max: usize) -> Result<Vec<u8>, Refusal> {
    if request.body_length().is_some_and(|len| len > max) {
        return Err(refuse(413, format!("more than {max} bytes")));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| refuse(400, format!("cannot read the request: {e}")))?;
    Ok(body)
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
    json!({"bank": bank, "totals": totals})
}
