//! Hardware behind the runtime's traits (feature `device`): a V4L2 camera and reject lines on a
//! Raspberry Pi pin (rppal) or a GPIO character device line (gpiocdev).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use v4l::buffer::{Flags, Metadata, Type};
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::capture::Parameters;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::config::PixelFormat;
use super::pixels::yuyv_to_rgb;
use super::reject::RejectLine;
use super::source::{Frame, FrameSource};

/// A V4L2 capture device streaming through mmap buffers.
pub(crate) struct V4l2Source {
    stream: Stream<'static>,
    path: PathBuf,
    format: PixelFormat,
    width: u32,
    height: u32,
    last_sequence: Option<u32>,
    dropped: u64,
}

impl V4l2Source {
    pub fn open(
        path: &Path,
        width: u32,
        height: u32,
        fps: u32,
        format: PixelFormat,
        stall: Duration,
    ) -> Result<V4l2Source> {
        let name = path.display();
        let device = Device::with_path(path).with_context(|| format!("{name}: cannot open the camera"))?;
        let mut wanted = device
            .format()
            .with_context(|| format!("{name}: cannot read the format"))?;
        wanted.width = width;
        wanted.height = height;
        wanted.fourcc = FourCC::new(match format {
            PixelFormat::Mjpeg => b"MJPG",
            PixelFormat::Yuyv => b"YUYV",
        });
        let got = device
            .set_format(&wanted)
            .with_context(|| format!("{name}: cannot set the format"))?;
        if (got.width, got.height, got.fourcc) != (width, height, wanted.fourcc) {
            bail!(
                "{name}: the camera offers {}×{} {} instead of {width}×{height} {}",
                got.width,
                got.height,
                got.fourcc,
                wanted.fourcc
            );
        }
        device
            .set_params(&Parameters::with_fps(fps))
            .with_context(|| format!("{name}: cannot set {fps} fps"))?;
        let mut stream = Stream::with_buffers(&device, Type::VideoCapture, 4)
            .with_context(|| format!("{name}: cannot start streaming"))?;
        stream.set_timeout(stall);
        Ok(V4l2Source {
            stream,
            path: path.to_path_buf(),
            format,
            width,
            height,
            last_sequence: None,
            dropped: 0,
        })
    }
}

impl FrameSource for V4l2Source {
    fn next(&mut self, frame: &mut Frame) -> Result<bool> {
        let (data, meta) = self
            .stream
            .next()
            .with_context(|| format!("{}: no frame (camera gone or stalled)", self.path.display()))?;
        let captured = capture_instant(meta);
        if let Some(last) = self.last_sequence {
            self.dropped += meta.sequence.wrapping_sub(last).saturating_sub(1) as u64;
        }
        self.last_sequence = Some(meta.sequence);
        // Sized once for the largest frame the driver's buffers can hold.
        frame.encoded.reserve(data.len().saturating_sub(frame.encoded.len()));
        let used = &data[..(meta.bytesused as usize).min(data.len())];
        match self.format {
            PixelFormat::Yuyv => {
                yuyv_to_rgb(used, self.width, self.height, &mut frame.image)?;
                frame.jpeg = false;
            }
            // Decoded by the loop, where a damaged frame gets the fail-safe.
            PixelFormat::Mjpeg => frame.set_jpeg(used),
        }
        frame.captured = captured;
        frame.sequence = meta.sequence as u64;
        frame.truth = None;
        Ok(true)
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// When the driver captured a buffer, as an `Instant` (both count CLOCK_MONOTONIC): a frame that
/// waited in the driver's queue keeps its real capture time, and its part its real gate time.
/// The dequeue time when the driver gives no believable monotonic stamp.
fn capture_instant(meta: &Metadata) -> Instant {
    let mut clock = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut clock) } == 0;
    let now = Instant::now();
    let monotonic = meta.flags & Flags::TIMESTAMP_MASK == Flags::TIMESTAMP_MONOTONIC;
    let micros = |sec: i128, usec: i128| sec * 1_000_000 + usec;
    let age = micros(clock.tv_sec.into(), (clock.tv_nsec / 1000).into())
        - micros(meta.timestamp.sec.into(), meta.timestamp.usec.into());
    match u64::try_from(age) {
        Ok(age) if read && monotonic && age < 60_000_000 => now.checked_sub(Duration::from_micros(age)).unwrap_or(now),
        _ => now,
    }
}

/// A Raspberry Pi output pin (BCM numbering).
pub(crate) struct RppalLine {
    pin: rppal::gpio::OutputPin,
    active_high: bool,
}

impl RppalLine {
    pub fn open(pin: u8, active_high: bool) -> Result<RppalLine> {
        let gpio = rppal::gpio::Gpio::new().context("cannot open the Raspberry Pi GPIO")?;
        let pin = gpio.get(pin).with_context(|| format!("GPIO {pin} is not available"))?;
        let mut pin = if active_high {
            pin.into_output_low()
        } else {
            pin.into_output_high()
        };
        // A stop line must stay asserted after the process lets go of it.
        pin.set_reset_on_drop(false);
        Ok(RppalLine { pin, active_high })
    }
}

impl RejectLine for RppalLine {
    fn set(&mut self, active: bool, _intended: Instant) -> Result<()> {
        if active == self.active_high {
            self.pin.set_high();
        } else {
            self.pin.set_low();
        }
        Ok(())
    }
}

/// A line of a Linux GPIO character device (Jetson and other boards).
pub(crate) struct GpiocdevLine {
    request: gpiocdev::Request,
    line: u32,
}

impl GpiocdevLine {
    pub fn open(chip: &Path, line: u32, active_high: bool) -> Result<GpiocdevLine> {
        let mut builder = gpiocdev::Request::builder();
        builder
            .on_chip(chip)
            .with_consumer("ucad")
            .with_line(line)
            .as_output(gpiocdev::line::Value::Inactive);
        if !active_high {
            builder.as_active_low();
        }
        let request = builder
            .request()
            .with_context(|| format!("{} line {line}: cannot request it", chip.display()))?;
        Ok(GpiocdevLine { request, line })
    }
}

impl RejectLine for GpiocdevLine {
    fn set(&mut self, active: bool, _intended: Instant) -> Result<()> {
        let value = if active {
            gpiocdev::line::Value::Active
        } else {
            gpiocdev::line::Value::Inactive
        };
        self.request
            .set_value(self.line, value)
            .with_context(|| format!("cannot drive GPIO line {}", self.line))
    }
}
