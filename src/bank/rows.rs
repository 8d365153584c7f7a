//! A matrix of feature rows as the bank stores it (f32, f16, or int8 with a scale per column),
//! and as the detector searches it: in tiles decoded on the fly, so that memory holds only the
//! stored form.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum Precision {
    F32,
    F16,
    /// Symmetric int8, one scale per column (per feature dimension).
    I8,
}

impl Precision {
    /// Bytes that `len` rows of `dim` take when stored at this precision.
    pub fn bytes(self, len: usize, dim: usize) -> usize {
        match self {
            Precision::F32 => len * dim * 4,
            Precision::F16 => len * dim * 2,
            Precision::I8 => dim * 4 + len * dim,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Storage {
    F32(Vec<f32>),
    /// IEEE half floats, bit patterns.
    F16(Vec<u16>),
    /// value = scales[column] · q.
    I8 {
        scales: Vec<f32>,
        values: Vec<i8>,
    },
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
            Precision::I8 => int8_columns(&data, dim),
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
            Storage::I8 { values, .. } => values.len(),
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
            Storage::I8 { .. } => Precision::I8,
        }
    }

    pub fn bytes(&self) -> usize {
        self.precision().bytes(self.len(), self.dim())
    }

    /// The rows as f32: what is searched, exactly as stored.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::new();
        self.decode(0..self.len(), &mut out);
        out
    }

    /// Rows `range` as f32, borrowed when stored as f32, else decoded into `buffer`.
    pub(crate) fn tile<'a>(&'a self, range: std::ops::Range<usize>, buffer: &'a mut Vec<f32>) -> &'a [f32] {
        match &self.storage {
            Storage::F32(v) => &v[range.start * self.dim()..range.end * self.dim()],
            _ => {
                self.decode(range, buffer);
                buffer
            }
        }
    }

    fn decode(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
        let values = range.start * self.dim()..range.end * self.dim();
        out.clear();
        match &self.storage {
            Storage::F32(v) => out.extend_from_slice(&v[values]),
            Storage::F16(v) => out.extend(v[values].iter().map(|b| half::f16::from_bits(*b).to_f32())),
            Storage::I8 { scales, values: q } => {
                for row in q[values].chunks(self.dim()) {
                    out.extend(row.iter().zip(scales).map(|(q, s)| *q as f32 * s));
                }
            }
        }
    }

    /// Whether the declared dim divides the stored values and the scales match it (a decoded
    /// file may lie).
    pub(crate) fn is_consistent(&self) -> bool {
        let scales_fit = match &self.storage {
            Storage::I8 { scales, .. } => scales.len() == self.dim(),
            _ => true,
        };
        self.dim > 0 && self.values() % self.dim() == 0 && scales_fit
    }

    /// The first stored value (or int8 scale) that is not finite or could decode beyond
    /// ±`limit`, described; read in place, without decoding the rows.
    pub(crate) fn out_of_range(&self, limit: f32) -> Option<String> {
        let bad = |v: f32| v.is_nan() || v.abs() > limit;
        let row = |i: usize| i / self.dim().max(1);
        match &self.storage {
            Storage::F32(v) => v
                .iter()
                .position(|v| bad(*v))
                .map(|i| format!("row {} holds {}", row(i), v[i])),
            Storage::F16(v) => v
                .iter()
                .map(|b| half::f16::from_bits(*b).to_f32())
                .position(bad)
                .map(|i| format!("row {} holds {}", row(i), half::f16::from_bits(v[i]))),
            // |q| ≤ 128, so a scale within limit / 128 keeps every decoded value within limit.
            Storage::I8 { scales, .. } => scales
                .iter()
                .position(|s| bad(s * 128.0))
                .map(|c| format!("the int8 scale of column {c} is {}", scales[c])),
        }
    }
}

/// Symmetric per-column int8 storage.
fn int8_columns(data: &[f32], dim: usize) -> Storage {
    let (values, scales) = crate::linalg::quantise_columns(data, dim);
    Storage::I8 { scales, values }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_precision_round_trips_within_its_step() {
        let data: Vec<f32> = (0..60)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * [0.01, 1.0, 100.0][i % 3])
            .collect();
        for precision in [Precision::F32, Precision::F16, Precision::I8] {
            let rows = Rows::new(3, data.clone(), precision);
            assert_eq!((rows.len(), rows.precision()), (20, precision));
            let decoded = rows.to_f32();
            for (i, (d, v)) in decoded.iter().zip(&data).enumerate() {
                // int8: half a step of the column's scale (its max / 127); f16: relative 2⁻¹¹.
                let column_max = data.iter().skip(i % 3).step_by(3).fold(0f32, |m, v| m.max(v.abs()));
                let allowed = match precision {
                    Precision::F32 => 0.0,
                    Precision::F16 => v.abs() / 2048.0,
                    Precision::I8 => column_max / 254.0 + 1e-6,
                };
                assert!((d - v).abs() <= allowed, "{precision:?} {v} → {d}");
            }
            let mut buffer = Vec::new();
            assert_eq!(rows.tile(5..7, &mut buffer), &decoded[15..21]);
        }
        assert_eq!(Rows::new(4, vec![0.0; 8], Precision::I8).bytes(), 4 * 4 + 8);
    }

    #[test]
    fn a_value_out_of_range_is_found_in_every_precision() {
        for precision in [Precision::F32, Precision::F16, Precision::I8] {
            let mut data = vec![1.0f32; 12];
            assert_eq!(Rows::new(3, data.clone(), precision).out_of_range(10.0), None);
            data[7] = 1e6;
            let expected = match precision {
                Precision::F32 => "row 2 holds 1000000".to_string(),
                Precision::F16 => "row 2 holds inf".to_string(),
                Precision::I8 => format!("the int8 scale of column 1 is {}", 1e6f32 / 127.0),
            };
            let found = Rows::new(3, data.clone(), precision).out_of_range(10.0);
            assert_eq!(found, Some(expected), "{precision:?}");
        }
        let mut data = vec![1.0f32; 12];
        data[7] = f32::NAN;
        for precision in [Precision::F32, Precision::F16] {
            let found = Rows::new(3, data.clone(), precision).out_of_range(10.0);
            assert_eq!(found.as_deref(), Some("row 2 holds NaN"), "{precision:?}");
        }
    }
}
