//! The float type the backbone computes in (`[runtime] precision`, `--compute-precision`): f32, or f16
//! where the CPU has FP16 arithmetic (ARMv8.2: a Pi 5's Cortex-A76, an Orin's A78AE). Not to be
//! confused with the bank's `Precision`, how a bank *stores* its rows.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a backbone pass computes in. Features of one image differ slightly between the two, and
/// thresholds fitted on one do not hold for the other: a bank records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arithmetic {
    #[default]
    F32,
    /// Half floats, except LayerNorm, which stays f32 (its sums of squares overflow f16).
    F16,
}

impl Arithmetic {
    pub fn name(self) -> &'static str {
        match self {
            Arithmetic::F32 => "f32",
            Arithmetic::F16 => "f16",
        }
    }

    /// The tensor type of a pass's inputs and outputs inside tract.
    pub(crate) fn datum_type(self) -> tract_core::prelude::DatumType {
        match self {
            Arithmetic::F32 => tract_core::prelude::DatumType::F32,
            Arithmetic::F16 => tract_core::prelude::DatumType::F16,
        }
    }
}

impl fmt::Display for Arithmetic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The setting: a fixed arithmetic, or `auto` (f16 where the CPU has FP16 arithmetic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ArithmeticChoice {
    #[default]
    Auto,
    F32,
    F16,
}

impl ArithmeticChoice {
    /// The arithmetic this machine uses for the choice. Forcing f16 works everywhere (tract
    /// emulates half floats where the CPU lacks them: slow, but the same numbers).
    pub fn resolve(self) -> Arithmetic {
        match self {
            ArithmeticChoice::Auto if cpu_has_fp16() => Arithmetic::F16,
            ArithmeticChoice::Auto | ArithmeticChoice::F32 => Arithmetic::F32,
            ArithmeticChoice::F16 => Arithmetic::F16,
        }
    }

    /// The arithmetic for scoring with, or appending to, a bank fitted in `bank`: `auto`
    /// follows the bank (a bank's thresholds hold for its own arithmetic alone, so a Pi 5 or
    /// an Orin keeps running the f32 banks it had before f16 existed), and the machine's
    /// choice without one.
    pub fn resolve_for(self, bank: Option<Arithmetic>) -> Arithmetic {
        match (self, bank) {
            (ArithmeticChoice::Auto, Some(bank)) => bank,
            _ => self.resolve(),
        }
    }
}

/// Whether this CPU computes in half floats natively (FEAT_FP16).
pub(crate) fn cpu_has_fp16() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("fp16")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_bank_and_a_fixed_choice_does_not() {
        for bank in [Arithmetic::F32, Arithmetic::F16] {
            assert_eq!(ArithmeticChoice::Auto.resolve_for(Some(bank)), bank);
            assert_eq!(ArithmeticChoice::F32.resolve_for(Some(bank)), Arithmetic::F32);
            assert_eq!(ArithmeticChoice::F16.resolve_for(Some(bank)), Arithmetic::F16);
        }
        assert_eq!(
            ArithmeticChoice::Auto.resolve_for(None),
            ArithmeticChoice::Auto.resolve()
        );
    }

    #[test]
    fn fixed_choices_resolve_to_themselves_and_auto_follows_the_cpu() {
        assert_eq!(ArithmeticChoice::F32.resolve(), Arithmetic::F32);
        assert_eq!(ArithmeticChoice::F16.resolve(), Arithmetic::F16);
        let auto = if cpu_has_fp16() {
            Arithmetic::F16
        } else {
            Arithmetic::F32
        };
        assert_eq!(ArithmeticChoice::Auto.resolve(), auto);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(auto, Arithmetic::F32, "no FP16 arithmetic is detected off aarch64");
    }
}
