//! The stop-line output of the `stop_line` fail-safe: opened at start-up, asserted on a fault,
//! held to the end of the process.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use log::{error, warn};

use super::config::LineConfig;
use super::open_line;
use super::reject::RejectLine;

/// The stop-line output, held from when it is opened to the end of the process: a released GPIO
/// line may fall back to its idle level, ending the stop it was asserted for.
static STOP_LINE: Mutex<Option<Box<dyn RejectLine>>> = Mutex::new(None);

fn held_stop_line() -> std::sync::MutexGuard<'static, Option<Box<dyn RejectLine>>> {
    STOP_LINE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Opens the stop-line output, when the config has one, at start-up: a stop line that cannot
/// work is an error before the first part, not when a fault needs it.
pub(crate) fn open_stop_line(config: Option<&LineConfig>) -> Result<()> {
    let Some(config) = config else {
        return Ok(());
    };
    let mut held = held_stop_line();
    if held.is_none() {
        *held = Some(open_line(config).context("failsafe.stop_line")?.0);
    }
    Ok(())
}

/// Asserts the stop-line output, when the config has one (opening it, if start-up did not get
/// that far), and keeps it asserted; says so in the log.
pub fn assert_stop_line(config: Option<&LineConfig>) {
    let Some(config) = config else {
        return;
    };
    let mut held = held_stop_line();
    let asserted = match held.as_mut() {
        Some(line) => line.set(true, Instant::now()),
        None => open_line(config).and_then(|(line, _)| held.insert(line).set(true, Instant::now())),
    };
    match asserted {
        Ok(()) => warn!("stop line asserted"),
        Err(e) => error!("cannot assert the stop line: {e:#}"),
    }
}
