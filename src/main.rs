//! The `ucad` binary: logging, the allocation counter the loop reports from, and the command
//! line (src/cli).

#![deny(unsafe_code)]

mod cli;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: ucad::alloc::CountingAllocator = ucad::alloc::CountingAllocator;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(err) = cli::run(cli::Cli::parse()) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
