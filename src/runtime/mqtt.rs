//! Decisions and counters to an MQTT broker (`[mqtt]`), for a plant's existing dashboards and
//! line controllers: every part's decision on `TOPIC/parts` (rejects and fail-safes at QoS 1, the
//! rest at QoS 0) and the counters on `TOPIC/counters` every `log_every_s`.
//!
//! The loop never waits on the network: it copies a fixed-size message into a bounded queue and
//! moves on; a full queue drops the message and counts it. A publisher thread turns messages into
//! JSON and hands them to the client (rumqttc), whose own bounded request queue drops (and counts)
//! what a lost broker leaves waiting; a connection thread drives the client and reconnects with
//! back-off. The session is kept (`clean_session = false`), so that rejects the broker has not
//! acknowledged are sent again after a reconnect; a broker that lost the session (a restart
//! without persistence) loses them, which `urgent` − `acknowledged` shows. Both threads allocate
//! from the frame pool, like the audit writer (about 400 bytes per waiting message).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use log::{info, warn};
use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use super::config::MqttConfig;
use super::counters::{Failsafe, PartRecord};
use crate::alloc::in_frame_pool;
use crate::update::state::{DeviceState, MqttCounters, MqttReport, Totals};

/// Between reconnection attempts: doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));
/// How long the end of a run waits for queued messages to reach the broker.
const FLUSH: Duration = Duration::from_secs(2);
/// A connection that lasted this long resets the back-off; a shorter one (a broker that closes
/// it at once, another client with the same id) keeps doubling it.
const STABLE: Duration = Duration::from_secs(10);

/// One message from the loop: plain values, copied without the heap.
#[derive(Clone, Copy)]
enum Message {
    Part { record: PartRecord, latency: Duration },
    Counters(Totals),
}

/// The loop's end of the queue, and the threads behind it.
pub(crate) struct MqttPublisher {
    queue: Option<SyncSender<Message>>,
    counters: Arc<MqttCounters>,
    publisher: Option<JoinHandle<()>>,
    /// Signalled (by the connection thread ending) once the client has sent what it held.
    flushed: Receiver<()>,
    stopping: Arc<AtomicBool>,
}

impl MqttPublisher {
    pub(crate) fn start(config: &MqttConfig, state: &Arc<DeviceState>) -> Result<MqttPublisher> {
        let (host, port) = config.host_and_port()?;
        let mut options = MqttOptions::new(config.client_id(), host, port);
        options.set_keep_alive(Duration::from_secs(15)).set_clean_session(false);
        let queue_len = config.queue;
        // rumqttc panics when it cannot build its runtime (no file descriptors left, say).
        let (client, connection) = std::panic::catch_unwind(move || Client::new(options, queue_len))
            .map_err(|_| anyhow::anyhow!("cannot start the MQTT client (out of file descriptors?)"))?;
        let (queue, messages) = sync_channel(config.queue);
        let counters = Arc::new(MqttCounters::default());
        *state.mqtt.lock().unwrap_or_else(|e| e.into_inner()) = Some(counters.clone());
        let stopping = Arc::new(AtomicBool::new(false));
        let (done, flushed) = sync_channel(1);
        let driven = (counters.clone(), stopping.clone(), config.broker.clone());
        std::thread::Builder::new()
            .name("ucad-mqtt-connection".into())
            .spawn(move || {
                in_frame_pool(|| drive(connection, &driven.0, &driven.1, &driven.2));
                let _ = done.send(());
            })
            .context("cannot start the MQTT connection")?;
        let publishing = Publishing {
            client,
            topic: config.topic.clone(),
            counters: counters.clone(),
            state: state.clone(),
        };
        let publisher = std::thread::Builder::new()
            .name("ucad-mqtt".into())
            .spawn(move || in_frame_pool(|| publishing.run(messages)))
            .context("cannot start the MQTT publisher")?;
        info!(
            "publishing decisions to {}/parts and counters to {}/counters on {}",
            config.topic, config.topic, config.broker
        );
        Ok(MqttPublisher {
            queue: Some(queue),
            counters,
            publisher: Some(publisher),
            flushed,
            stopping,
        })
    }

    /// Queues a part's decision; never waits.
    pub(crate) fn part(&self, record: &PartRecord, latency: Duration) {
        self.offer(Message::Part {
            record: *record,
            latency,
        });
    }

    /// Queues the counters; never waits.
    pub(crate) fn counters(&self, totals: &Totals) {
        self.offer(Message::Counters(*totals));
    }

    fn offer(&self, message: Message) {
        let Some(queue) = &self.queue else { return };
        if queue.try_send(message).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands over what is queued, waits up to `FLUSH` for the broker to take it (until the
    /// client has written everything before its DISCONNECT), and returns the counts.
    pub(crate) fn finish(mut self, totals: &Totals) -> MqttReport {
        self.counters(totals);
        self.queue = None;
        if let Some(publisher) = self.publisher.take() {
            let _ = publisher.join();
        }
        self.stopping.store(true, Ordering::Release);
        if self.flushed.recv_timeout(FLUSH).is_err() {
            warn!("MQTT: the broker did not take the last messages within {FLUSH:?}");
        }
        self.counters.report()
    }
}

struct Publishing {
    client: Client,
    topic: String,
    counters: Arc<MqttCounters>,
    state: Arc<DeviceState>,
}

impl Publishing {
    /// Until the loop's end of the queue is dropped; then the client is dropped, which lets the
    /// connection send what it holds and end.
    fn run(self, messages: Receiver<Message>) {
        let parts = format!("{}/parts", self.topic);
        let counters = format!("{}/counters", self.topic);
        for message in messages {
            let (topic, qos, payload) = match message {
                Message::Part { record, latency } => {
                    let urgent = record.rejected || record.failsafe.is_some();
                    let qos = if urgent { QoS::AtLeastOnce } else { QoS::AtMostOnce };
                    (&parts, qos, self.part_payload(&record, latency))
                }
                Message::Counters(totals) => (&counters, QoS::AtMostOnce, counters_payload(&totals, &self.counters)),
            };
            let counter = match self.client.try_publish(topic.as_str(), qos, false, payload.to_string()) {
                Ok(()) if qos == QoS::AtLeastOnce => &self.counters.urgent,
                Ok(()) => continue,
                Err(_) => &self.counters.dropped,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // After everything handed over: the connection ends once it has written it all.
        let _ = self.client.try_disconnect();
    }

    fn part_payload(&self, record: &PartRecord, latency: Duration) -> serde_json::Value {
        let captured = SystemTime::now() - record.captured.elapsed();
        let time_ms = captured.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let installed = self.state.installed.load();
        let task = record.task.map(|index| {
            let bank = installed.as_ref().filter(|i| Some(i.version) == record.bank_version);
            (bank.and_then(|i| i.detector.tasks().get(index)))
                .map_or_else(|| format!("task {index}"), |t| t.name.clone())
        });
        let score = Some(record.relative_score).filter(|s| s.is_finite());
        json!({
            "part": record.sequence,
            "time_unix_ms": time_ms,
            "task": task,
            "unknown": record.failsafe == Some(Failsafe::UnknownProduct),
            "score_minus_threshold": score,
            "reject": record.rejected,
            "failsafe": record.failsafe,
            "bank_version": record.bank_version,
            "latency_ms": latency.as_secs_f64() * 1e3,
        })
    }
}

fn counters_payload(totals: &Totals, mqtt: &MqttCounters) -> serde_json::Value {
    let mut payload = serde_json::to_value(totals).unwrap_or_default();
    payload["mqtt_dropped"] = mqtt.dropped.load(Ordering::Relaxed).into();
    payload
}

/// Polls the client's connection until it has sent the DISCONNECT that ends a run (or, while
/// the broker is lost, until the run stops); reconnects with back-off, logging each new kind of
/// failure once.
fn drive(mut connection: Connection, counters: &MqttCounters, stopping: &AtomicBool, broker: &str) {
    let mut backoff = BACKOFF.0;
    let mut last_failure = String::new();
    let mut connected_at: Option<Instant> = None;
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if last_failure.is_empty() || connected_at.is_none() {
                    info!("MQTT: connected to {broker}");
                }
                counters.connected.store(true, Ordering::Relaxed);
                connected_at = Some(Instant::now());
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                counters.acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => {
                counters.published.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                counters.connected.store(false, Ordering::Relaxed);
                if stopping.load(Ordering::Acquire) {
                    return;
                }
                let lasted = connected_at.take().map(|at| at.elapsed());
                if lasted.is_some_and(|l| l >= STABLE) {
                    (backoff, last_failure) = (BACKOFF.0, String::new());
                }
                let mut failure = e.to_string();
                if lasted.is_some_and(|l| l < STABLE) {
                    failure.push_str(" (right after connecting: another client with the same client_id?)");
                }
                if failure != last_failure {
                    warn!(
                        "MQTT: {broker}: {failure}; reconnecting (every {:?} at most)",
                        BACKOFF.1
                    );
                    last_failure = failure;
                }
                sleep_unless_stopping(backoff, stopping);
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

fn sleep_unless_stopping(time: Duration, stopping: &AtomicBool) {
    let end = Instant::now() + time;
    while Instant::now() < end && !stopping.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50).min(end.saturating_duration_since(Instant::now())));
    }
}
