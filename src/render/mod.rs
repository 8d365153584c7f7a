//! Pictures of judgements and of runs: a judgement's overlay on its frame (with the bitmap text
//! of its caption).

pub mod overlay;
pub(crate) mod text;
