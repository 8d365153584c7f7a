//! What a device shows about itself: `GET /status` (JSON), the status page `GET /` (one
//! self-contained HTML file that refreshes from `/status`) and the files of the last rejects
//! (`GET /audit/NAME`, only those `/status` lists).

use std::sync::atomic::Ordering;

use serde_json::json;

use super::state::DeviceState;

/// The status page: no CDN, no build step; its script reads `/status` every second.
pub(crate) const PAGE: &str = include_str!("status_page.html");

/// The largest audit file served (a frame as the camera sent it): an answer is held in memory
/// whole, up to `MAX_CONNECTIONS` of them.
const MAX_AUDIT_FILE: u64 = 8 << 20;

pub(crate) fn status(state: &DeviceState) -> serde_json::Value {
    let totals = *state.totals.lock().unwrap_or_else(|e| e.into_inner());
    let bank = state.installed.load().as_ref().map(|i| {
        let tasks = i.detector.tasks();
        json!({
            "version": i.version,
            "origin": i.origin,
            "arithmetic": i.arithmetic,
            "tasks": tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            "thresholds": tasks.iter().map(|t| t.threshold).collect::<Vec<_>>(),
        })
    });
    let demoted = state.demoted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let refused_requests = state.refused_requests.load(Ordering::Relaxed);
    let pull = state.pull.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mqtt = (state.mqtt.lock().unwrap_or_else(|e| e.into_inner()).as_ref()).map(|m| m.report());
    let products = state.products.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let recent_rejects: Vec<_> = (state.audit.lock().unwrap_or_else(|e| e.into_inner()).recent.iter())
        .cloned()
        .collect();
    json!({
        "bank": bank,
        "totals": totals,
        "products": products,
        "recent_rejects": recent_rejects,
        "demoted": demoted,
        "refused_requests": refused_requests,
        "pull": pull,
        "mqtt": mqtt,
    })
}

/// A file of one of the last rejects, with its content type.
pub(crate) fn audit_file(state: &DeviceState, name: &str) -> Result<(&'static str, Vec<u8>), String> {
    let path = (state.audit.lock().unwrap_or_else(|e| e.into_inner()).file(name))
        .ok_or_else(|| format!("no recent reject's file is called {name:?}"))?;
    // A link put in the folder under a listed name would serve whatever it points at.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(format!("{name} is a symbolic link: not served"));
    }
    let content_type = match path.extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        _ => "image/jpeg",
    };
    let bytes = crate::fsutil::read_regular(&path, MAX_AUDIT_FILE)
        .map_err(|e| format!("{name}: {e} (the disk budget may have deleted it)"))?;
    Ok((content_type, bytes))
}
