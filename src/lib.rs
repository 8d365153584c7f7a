//! ucad: unsupervised continual anomaly detection (UCAD, AAAI 2024) as an edge runtime.

pub mod alloc;
pub mod backbone;
pub mod bank;
pub mod data;
pub mod detect;
pub mod eval;
pub mod fit;
pub mod fsutil;
pub mod linalg;
pub mod parallel;
pub mod runtime;
#[cfg(feature = "train")]
pub mod train;
pub mod update;
