//! Records the git commit the binary is built from (`UCAD_COMMIT`, "unknown" outside a
//! checkout) for the board report of `ucad bench-runtime`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=UCAD_COMMIT={commit}");
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        // HEAD moves on checkout, logs/HEAD on every commit (also in a worktree).
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
