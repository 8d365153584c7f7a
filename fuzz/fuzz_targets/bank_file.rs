//! The bank file parser: any bytes give a bank or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ucad::bank::Bank::from_bytes(data, "fuzz input");
});
