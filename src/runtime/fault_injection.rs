//! Fault injection for tests (cargo feature `fault-injection`; never in a device build): with
//! `UCAD_PANIC_AT_FRAMES=3,7` in its environment, the loop panics while judging those frames, so
//! that a test can show a panic anywhere in judging ending in the fail-safe and the summary.

use std::sync::OnceLock;

/// The environment variable naming the frames (comma-separated sequence numbers).
pub(crate) const PANIC_AT_FRAMES: &str = "UCAD_PANIC_AT_FRAMES";

/// Panics when `sequence` is one of the frames named in the environment.
pub(crate) fn panic_if_chosen(sequence: u64) {
    static CHOSEN: OnceLock<Result<Vec<u64>, String>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| {
        std::env::var(PANIC_AT_FRAMES).map_or(Ok(Vec::new()), |list| {
            list.split(',')
                .map(|f| {
                    f.trim()
                        .parse()
                        .map_err(|_| format!("{PANIC_AT_FRAMES}: {f:?} is not a frame number"))
                })
                .collect()
        })
    });
    match chosen {
        Ok(frames) if frames.contains(&sequence) => panic!("injected panic while judging frame {sequence}"),
        Ok(_) => {}
        Err(message) => panic!("{message}"),
    }
}
