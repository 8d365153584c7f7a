//! ucad: unsupervised continual anomaly detection (UCAD, AAAI 2024) as an edge runtime.

pub mod backbone;
pub mod bank;
pub mod data;
pub mod detect;
pub mod eval;
pub mod fsutil;
pub mod parallel;
pub mod runtime;
#[cfg(feature = "train")]
pub mod train;
pub mod update;
