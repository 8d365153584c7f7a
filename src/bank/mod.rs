//! The key–prompt–knowledge memory bank: its file format and the coreset that fills it.

pub mod colour;
mod contents;
pub mod coreset;
mod describe;
pub mod format;
pub mod merge;
pub mod projection;
pub mod rows;
pub mod validate;

pub use contents::{Bank, BankError, Capacity, ImageStats, StoredPrompt, Task};
pub use contents::{NormalStats, RoutingStats};
pub use projection::Projection;
pub use rows::{Precision, Rows};
