//! A matrix of feature rows as the bank stores it (f32 or f16), and as the detector searches it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Precision {
    F32,
    F16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Storage {
    F32(Vec<f32>),
    /// IEEE half floats, bit patterns.
    F16(Vec<u16>),
}

/// Row-major [len, dim] feature rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rows {
    dim: u32,
    storage: Storage,
}

impl Rows {
    pub fn new(dim: usize, data: Vec<f32>, precision: Precision) -> Rows {
        assert!(
            dim > 0 && data.len() % dim == 0,
            "rows of dim {dim} cannot hold {} values",
            data.len()
        );
        let storage = match precision {
            Precision::F32 => Storage::F32(data),
            Precision::F16 => Storage::F16(data.iter().map(|v| half::f16::from_f32(*v).to_bits()).collect()),
        };
        Rows {
            dim: dim as u32,
            storage,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim as usize
    }

    fn values(&self) -> usize {
        match &self.storage {
            Storage::F32(v) => v.len(),
            Storage::F16(v) => v.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.values() / self.dim().max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn precision(&self) -> Precision {
        match self.storage {
            Storage::F32(_) => Precision::F32,
            Storage::F16(_) => Precision::F16,
        }
    }

    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(v) => v.len() * 4,
            Storage::F16(v) => v.len() * 2,
        }
    }

    /// The rows as f32, the form the nearest-neighbour search works on.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.storage {
            Storage::F32(v) => v.clone(),
            Storage::F16(v) => v.iter().map(|b| half::f16::from_bits(*b).to_f32()).collect(),
        }
    }

    /// Whether the declared dim divides the stored values (a decoded file may lie).
    pub fn is_consistent(&self) -> bool {
        self.dim > 0 && self.values() % self.dim() == 0
    }
}
