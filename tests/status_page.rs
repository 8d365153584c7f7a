//! The device's status page in a real headless Chromium (Debian's `chromium`, started by the
//! test): during a run the page shows the counters, the products and the last rejects with their
//! heatmaps, and the numbers in its DOM lie between two `/status` answers taken before and after.
//! `GET /audit/NAME` serves the listed rejects' files and nothing else.

mod common;

use std::time::{Duration, Instant};

use common::browser::{headless, text_after};
use common::device::Device;

fn with_audit(device: &Device) {
    let mut config = std::fs::read_to_string(&device.config).unwrap();
    config = config.replace("[update]", "[audit]\ndir = \"audit\"\nmax_mib = 64\n[update]");
    std::fs::write(&device.config, config).unwrap();
}

fn get(address: &str, path: &str) -> (u16, String, Vec<u8>) {
    let response = match ureq::get(&format!("http://{address}{path}")).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("{path}: {e}"),
    };
    let (status, kind) = (response.status(), response.content_type().to_string());
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
    (status, kind, body)
}

#[test]
fn the_page_shows_what_status_says_and_the_last_rejects() {
    let device = Device::new();
    with_audit(&device);
    let _running = device.start();
    let start = Instant::now();
    let before = loop {
        let status = device.status();
        let rejects = status["recent_rejects"].as_array().unwrap();
        if rejects.iter().filter(|r| r["heatmap"].is_string()).count() >= 2 {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no rejects saved: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let (code, kind, page) = get(&device.address, "/");
    assert_eq!((code, kind.as_str()), (200, "text/html"));
    assert!(
        !String::from_utf8_lossy(&page).contains("http"),
        "self-contained: no outside URL"
    );
    let heatmap = before["recent_rejects"][0]["heatmap"].as_str().unwrap();
    let (code, kind, jpeg) = get(&device.address, &format!("/audit/{heatmap}"));
    assert_eq!(
        (code, kind.as_str(), &jpeg[..2]),
        (200, "image/jpeg", &[0xFF, 0xD8][..])
    );
    for outside in [
        "../device.toml",
        "..%2Fdevice.toml",
        "device.toml",
        "line.key",
        "%2e%2e/line.key",
    ] {
        let (code, _, body) = get(&device.address, &format!("/audit/{outside}"));
        assert_eq!(code, 404, "{outside}: {}", String::from_utf8_lossy(&body));
    }

    let url = format!("http://{}/", device.address);
    let dom = headless(&url, &["--dump-dom"]);
    let after = device.status();
    for key in [
        "frames",
        "rejects",
        "failsafe_rejects",
        "unknown_products",
        "dropped_frames",
    ] {
        let shown: u64 = text_after(&dom, &format!("data-key=\"totals.{key}\""))
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let (low, high) = (
            before["totals"][key].as_u64().unwrap(),
            after["totals"][key].as_u64().unwrap(),
        );
        assert!(
            (low..=high).contains(&shown),
            "{key}: page {shown}, status {low}..{high}"
        );
    }
    assert!(text_after(&dom, "data-key=\"totals.frames\"").parse::<u64>().unwrap() > 0);
    let product = after["products"][0]["product"].as_str().unwrap();
    assert!(
        dom.contains(&format!("data-product=\"{product}\"")),
        "the product's row"
    );
    assert_eq!(
        text_after(&dom, "id=\"bank-version\""),
        format!("v{}", after["bank"]["version"])
    );
    assert!(dom.contains("-heatmap.jpg\""), "a reject's heatmap on the page");
    assert!(
        text_after(&dom, "id=\"link\"").starts_with("live"),
        "the page reads /status"
    );

    let shot = device.dir.path().join("status.png");
    headless(&url, &[&format!("--screenshot={}", shot.display())]);
    let image = image::open(&shot).unwrap();
    assert_eq!((image.width(), image.height()), (1280, 900));
    if let Ok(folder) = std::env::var("UCAD_SCREENSHOT_DIR") {
        std::fs::copy(&shot, std::path::Path::new(&folder).join("status-page.png")).unwrap();
    }
}
