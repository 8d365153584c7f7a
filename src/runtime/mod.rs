//! The device runtime (`ucad run`): frames in, decisions out on a reject line, in fixed memory.

pub mod alloc;
pub mod config;
pub mod counters;
pub mod inspection;
pub mod learn;
pub mod reject;
pub mod schedule;
pub mod source;
