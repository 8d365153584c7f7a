//! Measuring ucad honestly: metrics, the continual protocol and its report (BENCHMARK.md).

pub mod aupro;
pub mod bench_bank;
pub mod bench_routing;
pub mod continual;
pub mod feature_cache;
pub mod gallery;
pub mod html;
pub(crate) mod metrics;
pub mod protocol;
pub mod report;
pub mod validation_pool;
