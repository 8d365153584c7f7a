//! The `[reject]` and `[failsafe]` sections: the reject output, and what a part that cannot be
//! judged in time gets.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::millis;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectConfig {
    pub line: LineConfig,
    /// Capture to actuator: when the part reaches the reject gate (`travel_delay_ms`).
    #[serde(rename = "travel_delay_ms", deserialize_with = "millis")]
    pub travel_delay: Duration,
    #[serde(rename = "pulse_width_ms", deserialize_with = "millis")]
    pub pulse_width: Duration,
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
    /// A frame not decided this long after capture gets the fail-safe action (`deadline_ms`).
    #[serde(rename = "deadline_ms", deserialize_with = "millis")]
    pub deadline: Duration,
    /// No frame for this long is a stalled source (`stall_ms`).
    #[serde(rename = "stall_ms", deserialize_with = "millis")]
    pub stall: Duration,
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
            deadline: Duration::from_millis(1000),
            stall: Duration::from_millis(5000),
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
