//! The device runtime (`ucad run`): frames in, decisions out on a reject line, in fixed memory.

pub mod alloc;
pub mod audit;
pub mod board_report;
pub mod capture;
pub mod config;
pub mod counters;
#[cfg(feature = "device")]
pub mod device;
#[cfg(feature = "fault-injection")]
pub mod fault_injection;
pub mod inspection;
pub mod learn;
pub mod pixels;
pub mod reject;
pub mod schedule;
pub mod source;
