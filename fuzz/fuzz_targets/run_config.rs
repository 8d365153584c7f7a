//! A board config as `ucad run` reads it: TOML text through parsing and every check. An error
//! or a config, never a panic; a config that passes gives durations and sizes the loop can use.
#![no_main]

use std::path::Path;
use std::time::Instant;

use ucad::runtime::config::{frame_period, RunConfig};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = RunConfig::parse(text, Path::new("/fuzz")) {
        let _ = Instant::now() + config.reject.travel_delay + config.reject.pulse_width + config.failsafe.stall;
        frame_period(config.source.fps()).expect("a checked frame rate");
        config.memory.frame_pool_bytes().expect("a checked frame pool");
    }
});
