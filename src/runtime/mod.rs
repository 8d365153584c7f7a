//! The device runtime (`ucad run`): frames in, decisions out on a reject line, in fixed memory.

pub mod audit;
pub mod board_report;
pub mod capture;
pub mod config;
pub mod counters;
#[cfg(feature = "fault-injection")]
pub(crate) mod fault_injection;
#[cfg(feature = "device")]
#[allow(unsafe_code)] // SAFETY comments at each block
pub(crate) mod hardware;
pub mod inspection;
pub mod learn;
pub(crate) mod mqtt;
pub mod pixels;
#[allow(unsafe_code)] // SAFETY comments at each block
pub mod reject;
pub mod schedule;
pub mod source;
pub mod stop_line;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use config::{LineConfig, SourceConfig};
use reject::{RejectLine, SimRecord};
use source::FrameSource;

// The factories of sources and lines live here, so that no source or line file needs another.

/// The source a config names; `stall` bounds how long a camera may go without a frame.
pub fn open_source(config: &SourceConfig, stall: Duration) -> Result<Box<dyn FrameSource>> {
    Ok(match config {
        SourceConfig::Conveyor { .. } => Box::new(source::conveyor(config)?),
        SourceConfig::Folder { path, fps, repeat } => Box::new(source::folder(path, *fps, *repeat)?),
        #[cfg(feature = "device")]
        SourceConfig::V4l2 {
            device,
            width,
            height,
            fps,
            format,
        } => Box::new(hardware::V4l2Source::open(
            device, *width, *height, *fps, *format, stall,
        )?),
        #[cfg(not(feature = "device"))]
        SourceConfig::V4l2 { device, .. } => {
            let _ = stall;
            anyhow::bail!(
                "{}: this build has no V4L2 support (build with --features device)",
                device.display()
            )
        }
    })
}

/// Edge capacity of a simulated line (reserved at start-up).
const SIM_EDGES: usize = 1 << 16;

pub(crate) type OpenedLine = (Box<dyn RejectLine>, Option<Arc<Mutex<SimRecord>>>);

/// The line a config names, and the record of a simulated one.
pub(crate) fn open_line(config: &LineConfig) -> Result<OpenedLine> {
    match config {
        LineConfig::Simulated => {
            let (line, record) = reject::SimulatedLine::new(SIM_EDGES);
            Ok((Box::new(line), Some(record)))
        }
        #[cfg(feature = "device")]
        LineConfig::Rppal { pin, active_high } => Ok((Box::new(hardware::RppalLine::open(*pin, *active_high)?), None)),
        #[cfg(feature = "device")]
        LineConfig::Gpiocdev {
            chip,
            line,
            active_high,
        } => Ok((Box::new(hardware::GpiocdevLine::open(chip, *line, *active_high)?), None)),
        #[cfg(not(feature = "device"))]
        LineConfig::Rppal { pin, .. } => {
            anyhow::bail!("GPIO pin {pin}: this build has no rppal support (build with --features device)")
        }
        #[cfg(not(feature = "device"))]
        LineConfig::Gpiocdev { chip, line, .. } => anyhow::bail!(
            "{} line {line}: this build has no GPIO character device support (build with --features device)",
            chip.display()
        ),
    }
}
