//! Measuring ucad honestly: metrics, the continual protocol and its report (BENCHMARK.md).

pub mod aupro;
pub mod continual;
pub mod metrics;
pub mod protocol;
pub mod report;
