//! Over-the-air bank updates: signed envelopes, the device's listener, atomic install with a
//! last-known-good copy, and the pusher's side.

pub mod client;
pub mod http;
pub mod listener;
mod metrics;
pub mod policy;
pub mod signing;
pub mod state;
pub mod store;
