//! Decisions to a real MQTT broker (Debian's `mosquitto` on 127.0.0.1, started by the tests): a
//! subscriber receives every part of a 60-frame run, rejects and fail-safes among them, with
//! their fields; a broker absent at start and killed mid-run costs the loop nothing (p99 printed
//! with and without a broker), drops are counted, and the device reconnects when it is back.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::device::{free_port, Device};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

const TOPIC: &str = "ucad/line-a/cam3";

/// `mosquitto` listening on 127.0.0.1:`port`, killed when dropped.
struct Broker(Child);

impl Broker {
    fn start(dir: &Path, port: u16) -> Broker {
        let config = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(&config, format!("listener {port} 127.0.0.1\nallow_anonymous true\n")).unwrap();
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs (.ci/run installs Debian's mosquitto)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "mosquitto does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker(child)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto() -> &'static str {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto")
}

/// A subscriber to everything under `TOPIC`, returned once the broker has acknowledged the
/// subscription: (topic, JSON payload) per message.
fn subscribe(port: u16) -> Receiver<(String, serde_json::Value)> {
    let (client, mut connection) = Client::new(MqttOptions::new("test-subscriber", "127.0.0.1", port), 64);
    client.subscribe(format!("{TOPIC}/#"), QoS::AtLeastOnce).unwrap();
    let (messages, received) = std::sync::mpsc::channel();
    let (subscribed, acknowledged) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _client = client;
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let payload = serde_json::from_slice(&p.payload).expect("JSON payloads");
                    if messages.send((p.topic, payload)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    acknowledged.recv_timeout(Duration::from_secs(10)).expect("subscribed");
    received
}

/// The device's config with `[mqtt]` for a broker on `port`.
fn with_mqtt(device: &Device, port: u16, queue: usize) {
    let mut config = std::fs::read_to_string(&device.config).unwrap();
    config = config.replace("log_every_s = 1e9", "log_every_s = 0.5");
    config.push_str(&format!(
        "[mqtt]\nbroker = \"127.0.0.1:{port}\"\ntopic = \"{TOPIC}\"\nqueue = {queue}\n"
    ));
    std::fs::write(&device.config, config).unwrap();
}

/// `ucad run --frames N` to its end; its summary.
fn run_frames(device: &Device, frames: u32, panic_at: &str) -> serde_json::Value {
    let summary = device.dir.path().join("summary.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ucad"))
        .args(["run", "--frames", &frames.to_string(), "--config"])
        .arg(&device.config)
        .arg("--summary-json")
        .arg(&summary)
        .env("UCAD_PANIC_AT_FRAMES", panic_at)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap()
}

#[test]
fn a_subscriber_receives_every_part_of_a_run_with_its_fields() {
    let device = Device::new();
    let port = free_port();
    let _broker = Broker::start(device.dir.path(), port);
    let received = subscribe(port);
    with_mqtt(&device, port, 256);
    let summary = run_frames(&device, 60, "4,9");

    let mut parts = Vec::new();
    let mut counters = 0;
    while let Ok((topic, payload)) = received.recv_timeout(Duration::from_secs(3)) {
        match topic.strip_prefix(TOPIC) {
            Some("/parts") => parts.push(payload),
            Some("/counters") => counters += 1,
            _ => panic!("unexpected topic {topic}"),
        }
    }
    let mut numbers: Vec<u64> = parts.iter().map(|p| p["part"].as_u64().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..60).collect::<Vec<_>>(), "every part once");
    assert!(counters >= 1, "counters every log_every_s");
    assert_eq!(summary["mqtt"]["dropped"], 0, "{summary}");
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    for part in &parts {
        let time = part["time_unix_ms"].as_u64().unwrap();
        assert!(time <= now_ms && time + 120_000 > now_ms, "{part}");
        assert!(part["latency_ms"].as_f64().unwrap() > 0.0, "{part}");
        let judged = part["failsafe"].is_null();
        assert_eq!(part["task"].is_string(), judged, "{part}");
        assert_eq!(part["score_minus_threshold"].is_number(), judged, "{part}");
        if judged {
            let rejected = part["score_minus_threshold"].as_f64().unwrap() > 0.0;
            assert_eq!(part["reject"], rejected, "{part}");
            assert_eq!(part["bank_version"], 1, "{part}");
        } else {
            assert_eq!(part["reject"], true, "a fail-safe rejects: {part}");
        }
        assert_eq!(part["unknown"], false, "{part}");
    }
    let failsafes: Vec<&serde_json::Value> = parts.iter().filter(|p| !p["failsafe"].is_null()).collect();
    assert_eq!(failsafes.len(), 2, "the two injected panics");
    assert!(failsafes.iter().all(|p| p["failsafe"] == "fault"), "{failsafes:?}");
    let rejects = parts.iter().filter(|p| p["reject"] == true).count() as u64;
    let summary_rejects = summary["rejects"].as_u64().unwrap() + summary["late_pulses"].as_u64().unwrap();
    assert_eq!(rejects, summary_rejects, "{summary}");
    assert!(rejects > 2, "judged rejects too");
    let mqtt = &summary["mqtt"];
    assert_eq!(mqtt["urgent"].as_u64(), Some(rejects), "rejects go at QoS 1: {mqtt}");
    assert_eq!(
        mqtt["acknowledged"], mqtt["urgent"],
        "and all were acknowledged: {mqtt}"
    );
}

#[test]
fn the_mqtt_section_is_checked_and_names_the_key() {
    let device = Device::new();
    let refusal = |section: &str| {
        let config = std::fs::read_to_string(&device.config).unwrap() + section;
        let path = device.dir.path().join("mqtt.toml");
        std::fs::write(&path, config).unwrap();
        format!("{:#}", ucad::runtime::config::RunConfig::load(&path).unwrap_err())
    };
    for broker in [
        "mqtt://h:1883",
        " h:1883",
        "[]:1883",
        "h:+1883",
        "h:0",
        "h:65536",
        "h",
        "::1:1883",
    ] {
        let err = refusal(&format!("[mqtt]\nbroker = {broker:?}\ntopic = \"ucad/a\"\n"));
        assert!(err.contains("mqtt.broker"), "{broker}: {err}");
    }
    for topic in ["$SYS/x", "ucad/#", "ucad/+/x", "ucad a", "ucad/", ""] {
        let err = refusal(&format!("[mqtt]\nbroker = \"h:1883\"\ntopic = {topic:?}\n"));
        assert!(err.contains("mqtt.topic"), "{topic}: {err}");
    }
    let long = "t".repeat(199);
    let err = refusal(&format!("[mqtt]\nbroker = \"h:1883\"\ntopic = \"{long}\"\n"));
    assert!(err.contains("derived from mqtt.topic"), "{err}");
    let err = refusal("[mqtt]\nbroker = \"h:1883\"\ntopic = \"a\"\nqueue = 0\n");
    assert!(err.contains("mqtt.queue"), "{err}");
}

#[test]
fn a_broker_lost_costs_the_loop_nothing_and_is_reconnected() {
    let without = Device::new();
    let alone = run_frames(&without, 60, "");
    let device = Device::new();
    let port = free_port();
    with_mqtt(&device, port, 8);
    let absent = run_frames(&device, 60, "");
    println!(
        "p99 without [mqtt] {} ms, with its broker absent {} ms",
        alone["p99_ms"], absent["p99_ms"]
    );
    for summary in [&alone, &absent] {
        assert_eq!(summary["parts"], 60, "{summary}");
        assert_eq!(summary["rejected_by_default"], 0, "the loop never waited: {summary}");
    }
    assert!(absent["mqtt"]["dropped"].as_u64().unwrap() > 0, "{absent}");

    let _running = device.start();
    let status = device.status_when("drops while no broker", |s| s["mqtt"]["dropped"].as_u64() > Some(0));
    assert_eq!(status["mqtt"]["connected"], false);
    let broker = Broker::start(device.dir.path(), port);
    let received = subscribe(port);
    device.status_when("reconnects", |s| s["mqtt"]["connected"] == true);
    let (topic, _) = received
        .recv_timeout(Duration::from_secs(10))
        .expect("messages after reconnecting");
    assert!(topic.starts_with(TOPIC), "{topic}");

    drop(broker);
    let lost = device.status_when("sees the broker gone", |s| s["mqtt"]["connected"] == false);
    let frames = lost["totals"]["frames"].as_u64().unwrap();
    device.status_when("frames go on", |s| s["totals"]["frames"].as_u64() > Some(frames + 20));
    let _broker = Broker::start(device.dir.path(), port);
    device.status_when("reconnects again", |s| s["mqtt"]["connected"] == true);
}
