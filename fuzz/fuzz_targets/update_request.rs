//! A device's update request as it comes off the socket: the HTTP parser, then every check
//! short of installing (envelope, signature, line, bank file, backbone, capacity, version), the
//! body also alone. Never a panic.
#![no_main]

use std::sync::OnceLock;

use ucad::bank::Capacity;
use std::time::{Duration, Instant};

use ucad::update::http::read_request;
use ucad::update::policy::{validate, UpdatePolicy};
use ucad::update::signing::Line;

fn policy() -> &'static UpdatePolicy {
    static POLICY: OnceLock<UpdatePolicy> = OnceLock::new();
    POLICY.get_or_init(|| UpdatePolicy {
        trusted: vec![ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key()],
        line: Line::new("fuzz").expect("a line name"),
        backbone: ucad::backbone::BackboneSpec {
            sha256: "f0".repeat(32),
            feature_dim: 8,
            patches: 4,
            prompt_blocks: 1,
            prompt_len: 1,
            embed_dim: 8,
            arithmetic: Some(ucad::backbone::Arithmetic::F32),
        },
        capacity: Capacity {
            tasks: 8,
            bytes_per_task: 1 << 20,
        },
        max_bytes: 1 << 20,
        request_deadline: Duration::from_secs(1),
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let deadline = Instant::now() + policy().request_deadline;
    if let Ok(request) = read_request(&mut &data[..], policy().max_bytes, deadline) {
        let _ = validate(&request.body, policy(), 1);
    }
    let _ = validate(data, policy(), 1);
});
