//! The `[update]` and `[mqtt]` sections: how a device on a fleet gets its banks and reports its
//! decisions.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Deserialize;

use super::{count, mib, positive, seconds, MAX_DURATION};

/// The shortest `update.poll_s`: a typo must not make a fleet flood its server.
const MIN_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Address to listen on for pushed banks and `GET /status`, `/metrics`, e.g.
    /// `127.0.0.1:7878` or the line network's interface address (off when absent).
    pub listen: Option<String>,
    /// A published manifest's URL (`ucad publish`), polled for newer banks (off when absent):
    /// `http://` or `https://`.
    pub source: Option<String>,
    /// PEM certificates of the CA(s) an `https://` source's certificate must chain to (a plant's
    /// own CA); without it, the public web's roots (Mozilla's, built in).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Between two checks of `source`.
    #[serde(rename = "poll_s", default = "default_poll", deserialize_with = "seconds")]
    pub poll: Duration,
    /// A manifest or bank fetch must be whole within this.
    #[serde(
        rename = "fetch_timeout_s",
        default = "default_fetch_timeout",
        deserialize_with = "seconds"
    )]
    pub fetch_timeout: Duration,
    /// Public keys (`ucad keygen`'s `.pub` files) whose signed banks this device accepts.
    pub trusted_keys: Vec<PathBuf>,
    /// The production line (or device group) this device is on: only banks signed for it
    /// (`ucad sign --line`) are accepted. Required, so that no two lines share one by default.
    pub line: crate::update::signing::Line,
    /// Larger requests are refused (a body up to twice this is read and discarded first).
    #[serde(default = "default_update_max_mib")]
    pub max_mib: usize,
}

fn default_update_max_mib() -> usize {
    64
}

fn default_poll() -> Duration {
    Duration::from_secs(60)
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(120)
}

/// The largest `update.max_mib`: a request body is held in memory whole.
pub(crate) const MAX_UPDATE_MIB: usize = 1024;

impl UpdateConfig {
    pub(super) fn check(&self) -> Result<()> {
        ensure!(
            !self.trusted_keys.is_empty(),
            "update.trusted_keys must name at least one key"
        );
        ensure!(
            (1..=MAX_UPDATE_MIB).contains(&self.max_mib),
            "update.max_mib ({}) must be 1 to {MAX_UPDATE_MIB}",
            self.max_mib
        );
        mib(self.max_mib)?;
        ensure!(
            self.listen.is_some() || self.source.is_some(),
            "[update] needs `listen` (pushed banks, status) or `source` (pulled banks), or both"
        );
        if let Some(source) = &self.source {
            check_source_url(source)?;
        }
        ensure!(
            self.ca_file.is_none() || self.source.as_deref().is_some_and(|s| s.starts_with("https://")),
            "update.ca_file is for an https:// update.source"
        );
        ensure!(
            self.poll >= MIN_POLL && self.poll <= MAX_DURATION * 24,
            "update.poll_s must be {MIN_POLL:?} to 1 day, not {:?}",
            self.poll
        );
        positive("update.fetch_timeout_s", self.fetch_timeout, MAX_DURATION)
    }
}

/// A manifest's URL: HTTP or HTTPS with a host and a file path, without query or fragment (the
/// bank is fetched from the same folder).
fn check_source_url(text: &str) -> Result<()> {
    let url = url::Url::parse(text).with_context(|| format!("update.source {text:?} is not a URL"))?;
    ensure!(
        matches!(url.scheme(), "http" | "https"),
        "update.source {text:?} must be an http:// or https:// URL"
    );
    ensure!(
        url.host_str().is_some_and(|h| !h.is_empty()) && url.path().len() > 1 && !url.path().ends_with('/'),
        "update.source {text:?} must name a host and the manifest's file, e.g. \
         http://updates.plant:8080/line-a/manifest"
    );
    ensure!(
        url.query().is_none() && url.fragment().is_none(),
        "update.source {text:?} must have no query or fragment: the bank is fetched from the manifest's folder"
    );
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `HOST:PORT` of the broker, e.g. `broker.plant:1883` (plain MQTT 3.1.1, no TLS).
    pub broker: String,
    /// Decisions go to `TOPIC/parts`, counters to `TOPIC/counters`, e.g. `ucad/line-a/cam3`.
    pub topic: String,
    /// The client id (default: `ucad-` and the topic with `/` as `-`): unique per broker.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Messages that may wait for the broker; more are dropped and counted.
    #[serde(default = "default_mqtt_queue")]
    pub queue: usize,
}

fn default_mqtt_queue() -> usize {
    256
}

/// The longest topic or client id: MQTT allows more, a broker's ACLs rarely do.
const MAX_MQTT_NAME: usize = 200;

impl MqttConfig {
    /// The broker's host (a name, an IPv4 address or a bracketed IPv6 one) and port.
    pub(crate) fn host_and_port(&self) -> Result<(String, u16)> {
        let broker = &self.broker;
        let malformed =
            || anyhow::anyhow!("mqtt.broker {broker:?} must be HOST:PORT, e.g. broker.plant:1883 or [fd00::5]:1883");
        let (host, port) = broker.rsplit_once(':').ok_or_else(malformed)?;
        let port = (port.parse::<u16>().ok())
            .filter(|p| *p > 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .with_context(|| format!("mqtt.broker {broker:?}: the port must be 1 to 65535"))?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().map_err(|_| malformed())?.to_string(),
            None => {
                let name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
                ensure!(!host.is_empty() && host.chars().all(name), malformed());
                host.to_string()
            }
        };
        Ok((host, port))
    }

    pub(crate) fn client_id(&self) -> String {
        (self.client_id.clone()).unwrap_or_else(|| format!("ucad-{}", self.topic.replace('/', "-")))
    }

    pub(super) fn check(&self) -> Result<()> {
        self.host_and_port()?;
        let plain = |name: &str| {
            !name.is_empty()
                && name.len() <= MAX_MQTT_NAME
                && !name
                    .chars()
                    .any(|c| matches!(c, '+' | '#') || c.is_control() || c.is_whitespace())
        };
        ensure!(
            plain(&self.topic) && !self.topic.ends_with('/') && !self.topic.starts_with('$'),
            "mqtt.topic {:?} must be 1 to {MAX_MQTT_NAME} bytes without wildcards (+, #), spaces, control \
             characters, a leading $ (the broker's own topics) or a trailing /",
            self.topic
        );
        let derived = if self.client_id.is_none() {
            " (derived from mqtt.topic: set mqtt.client_id)"
        } else {
            ""
        };
        ensure!(
            plain(&self.client_id()),
            "mqtt.client_id {:?}{derived} must be 1 to {MAX_MQTT_NAME} bytes without wildcards, spaces or control \
             characters",
            self.client_id()
        );
        count("mqtt.queue", self.queue as u64, 1..=4096)
    }
}
