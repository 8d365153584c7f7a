//! What an export writes: the architecture, input size, feature blocks, prompt length,
//! quantisation and resize.

use anyhow::{bail, ensure, Result};

use crate::backbone::arch::{Arch, ArchSpec};
use crate::backbone::meta::{Quant, Resize};

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub arch: Arch,
    pub input_size: usize,
    pub blocks: Vec<usize>,
    pub prompt_len: usize,
    pub quant: Quant,
    pub resize: Resize,
}

impl ExportOptions {
    pub fn defaults(arch: Arch) -> ExportOptions {
        ExportOptions {
            arch,
            input_size: arch.spec().default_input_size,
            blocks: vec![5.min(arch.spec().depth - 1)],
            prompt_len: 1,
            quant: Quant::F32,
            resize: Resize::Squash,
        }
    }

    pub(super) fn check(&self, spec: &ArchSpec) -> Result<()> {
        ensure!(!self.blocks.is_empty(), "at least one feature block is needed");
        for b in &self.blocks {
            ensure!(
                *b < spec.depth,
                "block {b} does not exist: {} has blocks 0..{}",
                self.arch,
                spec.depth - 1
            );
        }
        ensure!(self.prompt_len >= 1, "prompt length must be at least 1");
        if self.input_size == 0 || self.input_size % spec.patch != 0 {
            bail!(
                "input size {} is not a positive multiple of the patch size {}",
                self.input_size,
                spec.patch
            );
        }
        Ok(())
    }
}
