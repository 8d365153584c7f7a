//! Images in and out: dataset readers and the synthetic generator.

pub mod dataset;
pub mod defects;
pub mod folder;
pub mod synthetic;
