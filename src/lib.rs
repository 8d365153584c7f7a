//! ucad: unsupervised continual anomaly detection (UCAD, AAAI 2024) as an edge runtime.

#![deny(unsafe_code)]

#[allow(unsafe_code)] // SAFETY comments at each block
pub mod alloc;
pub mod backbone;
pub mod bank;
pub mod data;
pub mod detect;
pub mod eval;
pub mod fit;
pub mod fsutil;
#[allow(unsafe_code)] // SAFETY comments at each block
pub mod linalg;
pub mod parallel;
pub mod render;
pub mod runtime;
#[cfg(feature = "train")]
pub mod train;
pub mod update;
