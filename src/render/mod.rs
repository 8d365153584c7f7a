//! Pictures of judgements and of runs: a judgement's overlay on its frame (with the bitmap text
//! of its caption), charts as inline SVG, and the HTML pieces the reports share.

pub mod chart;
pub mod html;
pub mod overlay;
pub(crate) mod text;
