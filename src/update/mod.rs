//! Over-the-air bank updates: signed envelopes pushed to the device's listener, signed manifests
//! the device pulls from a web server, atomic install with a last-known-good copy, and the
//! pusher's and publisher's sides.

pub mod client;
pub mod http;
pub mod install;
pub mod listener;
pub mod manifest;
mod metrics;
pub mod policy;
pub mod pull;
pub mod signing;
pub mod state;
mod status;
pub mod store;
