//! `ucad run` configuration: one TOML file per board (board/*.toml).

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use serde::{Deserialize, Deserializer};

mod fleet;
mod reject;
mod source;

pub use fleet::{MqttConfig, UpdateConfig};
pub use reject::{FailsafeAction, LineConfig};
pub use reject::{FailsafeConfig, RejectConfig};
pub use source::{PixelFormat, Roi, SourceConfig, FPS};

use super::schedule::QUEUE_CAPACITY;

/// The longest travel, pulse, deadline or stall time a config may give: more is a typo.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The longest `log_every_s` (about 32 years: periodic lines off).
pub(crate) const MAX_LOG_EVERY: Duration = Duration::from_secs(1_000_000_000);
/// Reject-queue entries kept free of parts for the pulses that hold the gate over unseen parts.
pub(crate) const BLIND_PULSES: u64 = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// A backbone file, `default`, or an arch name (see `ucad models fetch`).
    #[serde(default = "default_backbone")]
    pub backbone: String,
    pub bank: BankConfig,
    pub source: SourceConfig,
    #[serde(default)]
    pub roi: Option<Roi>,
    #[serde(default)]
    pub routing: RoutingConfig,
    pub reject: RejectConfig,
    #[serde(default)]
    pub failsafe: FailsafeConfig,
    #[serde(default)]
    pub memory: MemoryConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Saving rejected frames with their heatmaps (off when absent).
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Signed bank updates: pushed to a listener, pulled from a web server, or both (off when
    /// absent).
    #[serde(default)]
    pub update: Option<UpdateConfig>,
    /// Decisions and counters to an MQTT broker (off when absent).
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    /// Between counter lines in the log (`log_every_s`).
    #[serde(rename = "log_every_s", default = "default_log_every", deserialize_with = "seconds")]
    pub log_every: Duration,
}

/// A duration given in milliseconds, parsed once: anything a `Duration` cannot hold (negative,
/// not finite, too large) is refused here, the bounds in [`RunConfig::check`].
fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let ms = f64::deserialize(deserializer)?;
    duration(ms / 1e3)
        .ok_or_else(|| serde::de::Error::custom(format!("{ms:?} ms is not a duration (a finite number, at least 0)")))
}

/// A duration given in seconds (see [`millis`]).
pub(super) fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let s = f64::deserialize(deserializer)?;
    duration(s)
        .ok_or_else(|| serde::de::Error::custom(format!("{s:?} s is not a duration (a finite number, at least 0)")))
}

fn duration(seconds: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(seconds).ok()
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Cores one frame's backbone pass spreads over; 0 (the default) = all cores.
    #[serde(default)]
    pub threads: usize,
    /// What the backbone computes in: `auto` (the default: f16 where the CPU has FP16
    /// arithmetic), `f32` or `f16`.
    #[serde(default)]
    pub precision: crate::backbone::ArithmeticChoice,
    /// Use a bank fitted in another precision than the backbone's (thresholds move: re-fitting
    /// is the better way out).
    #[serde(default)]
    pub allow_precision_mismatch: bool,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Reserved at start-up for everything a frame allocates while it is judged (tract's
    /// intermediate tensors above all); see `crate::alloc`.
    pub frame_pool_mib: usize,
}

impl MemoryConfig {
    pub fn frame_pool_bytes(&self) -> Result<usize> {
        mib(self.frame_pool_mib)
    }
}

/// MiB as bytes, refusing what this target's address space cannot hold.
pub fn mib(count: usize) -> Result<usize> {
    count
        .checked_mul(1 << 20)
        .with_context(|| format!("{count} MiB does not fit this machine's address space"))
}

impl Default for MemoryConfig {
    fn default() -> MemoryConfig {
        MemoryConfig { frame_pool_mib: 64 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Where rejected frames and their heatmaps go (relative to the config file).
    pub dir: PathBuf,
    /// Disk budget: the oldest saved parts are deleted to stay under it.
    pub max_mib: u64,
    /// Rejected frames that may wait for the writer; more are counted as not saved.
    #[serde(default = "default_audit_queue")]
    pub queue: usize,
}

fn default_audit_queue() -> usize {
    4
}

fn default_backbone() -> String {
    "default".into()
}

fn default_log_every() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankConfig {
    pub path: PathBuf,
    /// Memory reserved at start-up: banks beyond it are refused.
    #[serde(default = "default_capacity_tasks")]
    pub capacity_tasks: usize,
    /// Bytes of key, knowledge, projection and prompt per task, in KiB.
    #[serde(default = "default_capacity_task_kib")]
    pub capacity_task_kib: usize,
}

impl BankConfig {
    pub fn capacity(&self) -> crate::bank::Capacity {
        crate::bank::Capacity {
            tasks: self.capacity_tasks,
            bytes_per_task: self.capacity_task_kib.saturating_mul(1024),
        }
    }
}

fn default_capacity_tasks() -> usize {
    crate::bank::Capacity::DEFAULT.tasks
}

fn default_capacity_task_kib() -> usize {
    crate::bank::Capacity::DEFAULT.bytes_per_task >> 10
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct RoutingConfig {
    pub mode: RoutingMode,
    /// Sticky mode re-routes at least every this many frames.
    pub reroute_every: u32,
}

impl Default for RoutingConfig {
    fn default() -> RoutingConfig {
        RoutingConfig {
            mode: RoutingMode::PerFrame,
            reroute_every: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingMode {
    /// Route every frame.
    PerFrame,
    /// Keep the last task; re-route every `reroute_every` frames and whenever a frame would be
    /// rejected (a foreign product looks anomalous to the wrong task).
    Sticky,
}

/// A board config is a page of text.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The time between two frames at `fps` (refused outside [`FPS`]).
pub fn frame_period(fps: f64) -> Result<Duration> {
    ensure!(
        FPS.contains(&fps),
        "a frame rate must be between {} and {} fps, not {fps:?}",
        FPS.start(),
        FPS.end()
    );
    Ok(Duration::from_secs_f64(1.0 / fps))
}

/// Parts between the camera and the end of their reject pulse at most: each has its own entry
/// in the reject queue.
pub(crate) fn parts_in_flight(fps: f64, travel: Duration, width: Duration) -> u64 {
    (fps * (travel + width).as_secs_f64()).ceil() as u64 + 1
}

pub(super) fn count(key: &str, value: u64, range: RangeInclusive<u64>) -> Result<()> {
    ensure!(
        range.contains(&value),
        "{key} must be between {} and {}, not {value}",
        range.start(),
        range.end()
    );
    Ok(())
}

pub(super) fn positive(key: &str, value: Duration, max: Duration) -> Result<()> {
    ensure!(
        !value.is_zero() && value <= max,
        "{key} must be positive and at most {max:?}, not {value:?}"
    );
    Ok(())
}

impl RunConfig {
    /// Reads a config; relative paths in it are taken from the config file's folder.
    pub fn load(path: &Path) -> Result<RunConfig> {
        let text = crate::fsutil::read_text(path, MAX_CONFIG_BYTES)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        RunConfig::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("{}: invalid config", path.display()))
    }

    /// Parses and checks a config's text; relative paths in it are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<RunConfig> {
        let mut config: RunConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let key = e.path().to_string();
            match e.into_inner() {
                inner if key == "." => anyhow!(inner),
                inner => anyhow!("{key}: {inner}"),
            }
        })?;
        config.rebase(base);
        config.check()?;
        Ok(config)
    }

    fn rebase(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.bank.path);
        if let Some(audit) = &mut self.audit {
            join(&mut audit.dir);
        }
        if let Some(update) = &mut self.update {
            update.trusted_keys.iter_mut().for_each(join);
            update.ca_file.iter_mut().for_each(join);
        }
        if let SourceConfig::Folder { path, .. } = &mut self.source {
            join(path);
        }
        if self.backbone.ends_with(".onnx") && Path::new(&self.backbone).is_relative() {
            self.backbone = base.join(&self.backbone).display().to_string();
        }
    }

    /// Every value in its range, and the values consistent with each other; errors name the key.
    pub fn check(&self) -> Result<()> {
        let r = &self.reject;
        positive("reject.travel_delay_ms", r.travel_delay, MAX_DURATION)?;
        positive("reject.pulse_width_ms", r.pulse_width, MAX_DURATION)?;
        let f = &self.failsafe;
        positive("failsafe.deadline_ms", f.deadline, MAX_DURATION)?;
        positive("failsafe.stall_ms", f.stall, MAX_DURATION)?;
        positive("log_every_s", self.log_every, MAX_LOG_EVERY)?;
        ensure!(
            f.deadline <= r.travel_delay,
            "failsafe.deadline_ms ({:?}) must be at most reject.travel_delay_ms ({:?}): a part judged later \
             than its reject gate cannot be rejected",
            f.deadline,
            r.travel_delay
        );
        ensure!(
            f.action != FailsafeAction::StopLine || f.stop_line.is_some(),
            "failsafe.action = \"stop_line\" needs a [failsafe.stop_line] output"
        );
        count("bank.capacity_tasks", self.bank.capacity_tasks as u64, 1..=4096)?;
        count(
            "bank.capacity_task_kib",
            self.bank.capacity_task_kib as u64,
            1..=1 << 20,
        )?;
        count("memory.frame_pool_mib", self.memory.frame_pool_mib as u64, 1..=1 << 16)?;
        count(
            "runtime.threads",
            self.runtime.threads as u64,
            0..=crate::parallel::MAX_THREADS as u64,
        )?;
        self.memory.frame_pool_bytes().context("memory.frame_pool_mib")?;
        if let Some(audit) = &self.audit {
            count("audit.max_mib", audit.max_mib, 1..=1 << 24)?;
            count("audit.queue", audit.queue as u64, 1..=64)?;
        }
        if let Some(update) = &self.update {
            update.check()?;
        }
        if let Some(mqtt) = &self.mqtt {
            mqtt.check()?;
        }
        self.source.check()?;
        if let Some(roi) = self.roi {
            roi.check(self.source.frame_size())?;
        }
        let period = frame_period(self.source.fps()).context("source.fps")?;
        // A longer pulse would reject the next part too, and pulses that always overlap keep
        // the line active for good.
        ensure!(
            r.pulse_width < period,
            "reject.pulse_width_ms ({:?}) must be shorter than the time between parts at source.fps ({period:?})",
            r.pulse_width
        );
        // A stall is known only once it has lasted `stall`: by then the parts unseen since its
        // start must not have reached the gate, or its cover comes too late.
        ensure!(
            f.stall > period && f.stall + period < r.travel_delay,
            "failsafe.stall_ms ({:?}) must be longer than the time between frames ({period:?}) and, with one \
             more frame, shorter than reject.travel_delay_ms ({:?}): parts unseen during a stall must be \
             covered before they reach the gate",
            f.stall,
            r.travel_delay
        );
        let in_flight = parts_in_flight(self.source.fps(), r.travel_delay, r.pulse_width);
        ensure!(
            in_flight + BLIND_PULSES <= QUEUE_CAPACITY as u64,
            "source.fps × (reject.travel_delay_ms + reject.pulse_width_ms): {in_flight} parts between camera and \
             gate, the reject queue holds {}",
            QUEUE_CAPACITY as u64 - BLIND_PULSES
        );
        Ok(())
    }
}
