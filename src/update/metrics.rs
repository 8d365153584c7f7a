//! `GET /metrics`: the loop's counters, the installed bank's version and the refused updates
//! in the Prometheus text format (version 0.0.4), for a fleet's existing monitoring.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::state::DeviceState;

pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics page: one counter or gauge per line, each with its help and type.
pub(crate) fn render(state: &DeviceState) -> String {
    let t = *state.totals.lock().unwrap_or_else(|e| e.into_inner());
    let counters: [(&str, &str, u64); 12] = [
        ("frames", "Frames taken from the source.", t.frames),
        ("rejects", "Parts rejected on time.", t.rejects),
        (
            "failsafe_rejects",
            "Parts given the fail-safe action (not judged, or an unknown product).",
            t.failsafe_rejects,
        ),
        (
            "rejected_by_default",
            "Parts whose decision came too late or never.",
            t.rejected_by_default,
        ),
        ("judging_panics", "Frames whose judging panicked.", t.judging_panics),
        (
            "bank_demotions",
            "Banks sent back to the last-known-good one.",
            t.bank_demotions,
        ),
        (
            "unknown_products",
            "Parts no learned product explains.",
            t.unknown_products,
        ),
        (
            "source_stalls",
            "Times the source delivered no frame for the stall time.",
            t.stalls,
        ),
        (
            "dropped_frames",
            "Frames dropped because judging was behind.",
            t.dropped_frames,
        ),
        (
            "routing_switches",
            "Frames routed to another product than the frame before.",
            t.routing_switches,
        ),
        ("bank_swaps", "Banks adopted between frames.", t.bank_swaps),
        (
            "refused_requests",
            "Requests refused as malformed or not acceptable (4xx but 404).",
            state.refused_requests.load(Ordering::Relaxed),
        ),
    ];
    let mut page = String::new();
    for (name, help, value) in counters {
        metric(&mut page, &format!("ucad_{name}_total"), "counter", help, value);
    }
    let version = state.installed.load().as_ref().map_or(0, |i| i.version);
    metric(
        &mut page,
        "ucad_bank_version",
        "gauge",
        "Version of the installed bank (0: none).",
        version,
    );
    page
}

fn metric(page: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    // Writing to a String cannot fail.
    let _ = writeln!(page, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_type_and_one_sample_line() {
        let state = DeviceState::default();
        state.totals.lock().unwrap().frames = 42;
        state.refused_requests.store(3, Ordering::Relaxed);
        let page = render(&state);
        let lines: Vec<&str> = page.lines().collect();
        assert_eq!(lines.len(), 13 * 3);
        for sample in lines.chunks(3) {
            let name = sample[2].split(' ').next().unwrap();
            assert_eq!(sample[0].split(' ').nth(2), Some(name), "{sample:?}");
            assert!(sample[1].starts_with(&format!("# TYPE {name} ")), "{sample:?}");
            assert!(name.starts_with("ucad_") && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        assert!(page.contains("\nucad_frames_total 42\n"));
        assert!(page.contains("\nucad_refused_requests_total 3\n"));
        assert!(page.ends_with("ucad_bank_version 0\n"));
    }
}
