//! ucad: unsupervised continual anomaly detection (UCAD, AAAI 2024) as an edge runtime.

pub mod backbone;
pub mod data;
pub mod fsutil;
