//! The frozen ViT: weights, ONNX export, import of the default pretrained weights, and the tract
//! runner with its preprocessing.

pub mod arch;
pub mod bench;
pub mod export;
pub mod import;
pub mod meta;
pub mod models;
mod onnx_graph;
pub mod parity;
pub mod preprocess;
pub mod resample;
pub mod runner;
pub mod weights;

pub use arch::{Arch, ArchSpec};
pub use export::{export_model, export_to_file, ExportOptions};
pub use meta::{BackboneMeta, Quant, Resize};
pub use preprocess::Preprocessor;
pub use runner::{Backbone, Prompt};
pub use weights::VitWeights;
