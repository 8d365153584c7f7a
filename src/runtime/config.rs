//! `ucad run` configuration: one TOML file per board (board/*.toml).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::Deserialize;

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
    /// Saving rejected frames with their heatmaps (off when absent).
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// The listener for signed bank updates (off when absent).
    #[serde(default)]
    pub update: Option<UpdateConfig>,
    /// Seconds between counter lines in the log.
    #[serde(default = "default_log_every")]
    pub log_every_s: f64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Reserved at start-up for everything a frame allocates while it is judged (tract's
    /// intermediate tensors above all); see `runtime::alloc`.
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Address to listen on, e.g. `127.0.0.1:7878` or the line network's interface address.
    pub listen: String,
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

/// The largest `update.max_mib`: a request body is held in memory whole.
pub const MAX_UPDATE_MIB: usize = 1024;

fn default_audit_queue() -> usize {
    4
}

fn default_backbone() -> String {
    "default".into()
}

fn default_log_every() -> f64 {
    10.0
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
    32
}

fn default_capacity_task_kib() -> usize {
    2048
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Generated products passing at `fps`; defective parts with known ground truth.
    Conveyor {
        fps: f64,
        #[serde(default = "default_products")]
        products: usize,
        #[serde(default)]
        seed: u64,
        /// Parts of one product in a row before the line switches product.
        #[serde(default = "default_run_length")]
        run_length: usize,
        /// One part in `defect_every` is defective.
        #[serde(default = "default_defect_every")]
        defect_every: usize,
        #[serde(default = "default_frame_size")]
        size: u32,
        /// Normal training images per product written for `ucad fit` (see `ucad run --learn`).
        #[serde(default = "default_train_images")]
        train_images: usize,
        /// Deliver frames JPEG-compressed, as an MJPEG camera does (decoded in the loop).
        #[serde(default)]
        mjpeg: bool,
    },
    /// The images of a folder, in name order, at `fps` (looping when `repeat`).
    Folder {
        path: PathBuf,
        fps: f64,
        #[serde(default)]
        repeat: bool,
    },
    /// A V4L2 camera (feature `device`).
    V4l2 {
        device: PathBuf,
        width: u32,
        height: u32,
        fps: u32,
        format: PixelFormat,
    },
}

fn default_products() -> usize {
    2
}
fn default_run_length() -> usize {
    4
}
fn default_defect_every() -> usize {
    3
}
fn default_frame_size() -> u32 {
    256
}
fn default_train_images() -> usize {
    80
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    Mjpeg,
    Yuyv,
}

/// Region of interest in frame pixels, cropped before resizing to the backbone input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roi {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectConfig {
    pub line: LineConfig,
    /// Capture to actuator: when the part reaches the reject gate.
    pub travel_delay_ms: f64,
    pub pulse_width_ms: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LineConfig {
    /// Records timestamped edges (tests, dry runs).
    Simulated,
    /// A Raspberry Pi GPIO pin through rppal (BCM numbering).
    Rppal {
        pin: u8,
        #[serde(default = "default_true")]
        active_high: bool,
    },
    /// A Linux GPIO character device line (Jetson and other boards).
    Gpiocdev {
        chip: PathBuf,
        line: u32,
        #[serde(default = "default_true")]
        active_high: bool,
    },
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailsafeConfig {
    pub action: FailsafeAction,
    /// A frame not decided this long after capture gets the fail-safe action.
    pub deadline_ms: f64,
    /// No frame for this long is a stalled source.
    pub stall_ms: f64,
    /// Asserted by the `stop_line` action.
    #[serde(default)]
    pub stop_line: Option<LineConfig>,
    /// Consecutive source failures (camera errors, stalls) tolerated before the loop ends.
    #[serde(default = "default_source_retries")]
    pub source_retries: u32,
}

fn default_source_retries() -> u32 {
    3
}

impl Default for FailsafeConfig {
    fn default() -> FailsafeConfig {
        FailsafeConfig {
            action: FailsafeAction::Reject,
            deadline_ms: 1000.0,
            stall_ms: 5000.0,
            stop_line: None,
            source_retries: default_source_retries(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailsafeAction {
    /// Reject the part that could not be judged.
    Reject,
    /// Assert the stop-line output and stop the loop.
    StopLine,
}

impl RunConfig {
    /// Reads a config; relative paths in it are taken from the config file's folder.
    pub fn load(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let mut config: RunConfig =
            toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.rebase(base);
        config
            .check()
            .with_context(|| format!("{}: invalid config", path.display()))?;
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
        }
        if let SourceConfig::Folder { path, .. } = &mut self.source {
            join(path);
        }
        if self.backbone.ends_with(".onnx") && Path::new(&self.backbone).is_relative() {
            self.backbone = base.join(&self.backbone).display().to_string();
        }
    }

    pub fn check(&self) -> Result<()> {
        let r = &self.reject;
        ensure!(
            r.travel_delay_ms >= 0.0 && r.pulse_width_ms > 0.0,
            "reject timing must be positive"
        );
        let f = &self.failsafe;
        ensure!(
            f.deadline_ms > 0.0 && f.deadline_ms <= r.travel_delay_ms,
            "failsafe.deadline_ms ({}) must be positive and at most reject.travel_delay_ms ({}): a part judged \
             later than its reject gate cannot be rejected",
            f.deadline_ms,
            r.travel_delay_ms
        );
        ensure!(f.stall_ms > 0.0, "failsafe.stall_ms must be positive");
        ensure!(
            f.action != FailsafeAction::StopLine || f.stop_line.is_some(),
            "failsafe.action = \"stop_line\" needs a [failsafe.stop_line] output"
        );
        ensure!(
            self.bank.capacity_tasks >= 1 && self.bank.capacity_task_kib >= 1,
            "bank capacity must be positive"
        );
        ensure!(
            self.memory.frame_pool_mib >= 1,
            "memory.frame_pool_mib must be at least 1"
        );
        if let Some(audit) = &self.audit {
            ensure!(
                audit.max_mib >= 1 && audit.queue >= 1,
                "audit.max_mib and audit.queue must be at least 1"
            );
        }
        if let Some(update) = &self.update {
            ensure!(
                !update.trusted_keys.is_empty(),
                "update.trusted_keys must name at least one key"
            );
            ensure!(
                (1..=MAX_UPDATE_MIB).contains(&update.max_mib),
                "update.max_mib ({}) must be 1 to {MAX_UPDATE_MIB}",
                update.max_mib
            );
            mib(update.max_mib)?;
        }
        if let Some(roi) = self.roi {
            ensure!(roi.width > 0 && roi.height > 0, "roi must not be empty");
        }
        match &self.source {
            SourceConfig::Conveyor {
                fps,
                products,
                run_length,
                defect_every,
                ..
            } => {
                ensure!(
                    *fps > 0.0 && *products >= 1 && *run_length >= 1 && *defect_every >= 1,
                    "bad conveyor source"
                );
            }
            SourceConfig::Folder { fps, .. } => ensure!(*fps > 0.0, "source.fps must be positive"),
            SourceConfig::V4l2 { fps, width, height, .. } => {
                ensure!(*fps > 0 && *width > 0 && *height > 0, "bad v4l2 source size or fps")
            }
        }
        Ok(())
    }
}
