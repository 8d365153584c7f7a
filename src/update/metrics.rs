//! `GET /metrics`: the loop's counters, the installed bank's version, the refused requests and
//! the latency histogram in the Prometheus text format (version 0.0.4), for a fleet's existing
//! monitoring.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::state::{DeviceState, Failsafe, LatencyHistogram, ProductCount, LATENCY_BOUNDS_MS};

pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics page: each metric with its help, type and samples.
pub(crate) fn render(state: &DeviceState) -> String {
    let t = *state.totals.lock().unwrap_or_else(|e| e.into_inner());
    let counters: [(&str, &str, u64); 12] = [
        ("frames", "Frames taken from the source.", t.frames),
        (
            "rejects",
            "Parts rejected, fail-safe and late pulses included.",
            t.rejects,
        ),
        (
            "failsafe_rejects",
            "Parts given the fail-safe action: no bank, an unknown product, a fault, late, after the gate committed, or never judged (by reason in ucad_failsafes_total).",
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
            "stalls",
            "Stretches without frames: stalls, source errors, dropped frames.",
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
            "Requests answered with a 4xx but 404: refused pushes, malformed or too slow requests.",
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
    if let Some(pull) = state.pull.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        let refused = "Pull update checks whose manifest or bank was refused.";
        metric(&mut page, "ucad_pull_refused_total", "counter", refused, pull.refused);
        let failed = "Pull update checks that could not fetch the manifest or the bank.";
        metric(&mut page, "ucad_pull_failed_total", "counter", failed, pull.failed);
    }
    if let Some(mqtt) = state.mqtt.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        let report = mqtt.report();
        let dropped = "MQTT messages dropped: the queue to the broker was full (a slow or lost broker).";
        metric(&mut page, "ucad_mqtt_dropped_total", "counter", dropped, report.dropped);
        let connected = "Whether the MQTT broker is connected (1) or not (0).";
        metric(
            &mut page,
            "ucad_mqtt_connected",
            "gauge",
            connected,
            report.connected as u64,
        );
    }
    labelled(
        &mut page,
        "ucad_failsafes_total",
        "Parts given the fail-safe action, by reason.",
        Failsafe::ALL
            .iter()
            .map(|r| (("reason", r.name().to_string()), t.failsafes_by_reason.get(*r))),
    );
    let products = state.products.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let per_product = |name, help, count: fn(&ProductCount) -> u64| {
        let samples = products
            .iter()
            .map(move |p| (("product", escape(&p.product)), count(p)));
        (name, help, samples)
    };
    for (name, help, samples) in [
        per_product("ucad_product_parts_total", "Parts judged, by product.", |p| p.parts),
        per_product(
            "ucad_product_rejects_total",
            "Parts judged and rejected, by product.",
            |p| p.rejects,
        ),
    ] {
        labelled(&mut page, name, help, samples);
    }
    latency(&mut page, &t.latency);
    page
}

/// A counter with one label, one sample per value (none when there are none).
fn labelled(page: &mut String, name: &str, help: &str, samples: impl Iterator<Item = ((&'static str, String), u64)>) {
    let _ = writeln!(page, "# HELP {name} {help}\n# TYPE {name} counter");
    for ((label, value), count) in samples {
        let _ = writeln!(page, "{name}{{{label}=\"{value}\"}} {count}");
    }
}

/// A label value as the text format wants it: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The latency histogram: cumulative buckets, their sum and count, in seconds.
fn latency(page: &mut String, histogram: &LatencyHistogram) {
    let name = "ucad_latency_seconds";
    let _ = writeln!(
        page,
        "# HELP {name} Capture to decision, per part.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    for (bound, count) in LATENCY_BOUNDS_MS.iter().zip(&histogram.parts) {
        cumulative += count;
        let _ = writeln!(page, "{name}_bucket{{le=\"{}\"}} {cumulative}", bound / 1e3);
    }
    cumulative += histogram.parts[LATENCY_BOUNDS_MS.len()];
    let _ = writeln!(page, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(page, "{name}_sum {}", histogram.sum_ms / 1e3);
    let _ = writeln!(page, "{name}_count {cumulative}");
}

fn metric(page: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    // Writing to a String cannot fail.
    let _ = writeln!(page, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_type_and_its_samples() {
        let state = DeviceState::default();
        {
            let mut totals = state.totals.lock().unwrap();
            totals.frames = 42;
            for ms in [3.0, 5.0, 7.0, 400.0, 9000.0] {
                totals.latency.record(ms);
            }
        }
        state.refused_requests.store(3, Ordering::Relaxed);
        state.totals.lock().unwrap().failsafes_by_reason.add(Failsafe::Fault, 2);
        let slots = state.product_slots(["cap", "tray \"B\"\\x"].into_iter());
        state.count_product(slots[1], true);
        let page = render(&state);
        let mut lines = page.lines().peekable();
        while let Some(help) = lines.next() {
            let name = help.split(' ').nth(2).unwrap();
            assert!(help.starts_with("# HELP ucad_"), "{help}");
            assert!(lines.next().unwrap().starts_with(&format!("# TYPE {name} ")));
            let samples: Vec<&str> = std::iter::from_fn(|| lines.next_if(|l| !l.starts_with('#'))).collect();
            assert!(
                !samples.is_empty() && samples.iter().all(|s| s.starts_with(name)),
                "{samples:?}"
            );
        }
        assert!(page.contains("\nucad_frames_total 42\n"));
        assert!(page.contains("\nucad_refused_requests_total 3\n"));
        assert!(page.contains("\nucad_bank_version 0\n"));
        assert!(page.contains("\nucad_latency_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(page.contains("\nucad_latency_seconds_bucket{le=\"0.01\"} 3\n"));
        assert!(page.contains("\nucad_latency_seconds_bucket{le=\"0.5\"} 4\n"));
        assert!(page.contains("\nucad_latency_seconds_bucket{le=\"5\"} 4\n"));
        assert!(page.contains("\nucad_latency_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(page.contains("\nucad_latency_seconds_count 5\n"));
        assert!(page.contains("\nucad_latency_seconds_sum 9.415\n"), "{page}");
        assert!(page.contains("\nucad_failsafes_total{reason=\"fault\"} 2\n"), "{page}");
        assert!(page.contains("\nucad_failsafes_total{reason=\"late\"} 0\n"), "{page}");
        assert!(
            page.contains("\nucad_product_parts_total{product=\"cap\"} 0\n"),
            "{page}"
        );
        assert!(
            page.contains("\nucad_product_rejects_total{product=\"tray \\\"B\\\"\\\\x\"} 1\n"),
            "{page}"
        );
    }
}
