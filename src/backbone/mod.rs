//! The frozen ViT: weights, ONNX export, import of the default pretrained weights, and the tract
//! runner with its preprocessing.

pub mod arch;
pub mod arithmetic;
pub mod bench;
pub mod colour;
pub mod cost;
pub mod dequant;
pub mod export;
pub mod extract;
pub mod features_file;
pub mod import;
pub mod meta;
pub mod models;
mod onnx_graph;
pub mod parity;
pub mod preprocess;
pub mod resample;
pub(crate) mod runner;
pub mod weights;

pub use arch::{Arch, ArchSpec};
pub use arithmetic::{Arithmetic, ArithmeticChoice};
pub use export::{export_model, export_to_file, ExportOptions};
pub use meta::BackboneMeta;
pub use meta::{BackboneSpec, Quant, Resize};
pub use preprocess::Preprocessor;
pub use runner::{Backbone, Prompt};
pub use weights::VitWeights;

#[cfg(test)]
pub(crate) mod testing {
    use super::{export_model, Arch, Backbone, ExportOptions, VitWeights};
    use prost::Message;

    /// vit-tiny-test with random weights and its f32 export under tract (batch 1).
    pub fn tiny_backbone(seed: u64) -> (VitWeights, Backbone) {
        let weights = VitWeights::random(Arch::VitTinyTest, seed);
        let model = export_model(&weights, &ExportOptions::defaults(Arch::VitTinyTest)).unwrap();
        let backbone = Backbone::from_bytes(model.encode_to_vec(), std::path::Path::new("tiny.onnx"), 1).unwrap();
        (weights, backbone)
    }
}
