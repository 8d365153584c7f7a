//! A device's update request body, through every check short of installing: envelope,
//! signature, bank file, backbone, capacity, version. Never a panic.
#![no_main]

use std::sync::OnceLock;

use ucad::bank::Capacity;
use ucad::update::listener::{validate, UpdatePolicy};

fn policy() -> &'static UpdatePolicy {
    static POLICY: OnceLock<UpdatePolicy> = OnceLock::new();
    POLICY.get_or_init(|| UpdatePolicy {
        trusted: vec![ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key()],
        backbone_sha256: "fuzz".into(),
        capacity: Capacity {
            tasks: 8,
            rows_per_task: 1024,
        },
        max_bytes: 1 << 20,
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = validate(data, policy(), Some(1));
});
