//! `pinion bench publish` without the CLI crate:
//!
//! ```sh
//! cargo build --release -p pinion-cli          # the hub, target/release/pinion
//! cargo run --release -p pinion-loadgen --example publish -- --clients 1000 --runs 3
//! ```
//!
//! The `pinion` binary is found next to this example's directory
//! (`target/<profile>/pinion`) or given with `--pinion-exe PATH`.

use std::path::PathBuf;

use clap::Parser;
use pinion_loadgen::{locate_pinion_exe, run_publish, PublishArgs};

#[derive(Parser)]
#[command(
    name = "publish",
    about = "Publish throughput and ack latency: pinion vs Redis, NATS and the disk"
)]
struct Cli {
    #[command(flatten)]
    args: PublishArgs,
    /// The pinion binary to start `serve` from.
    #[arg(long, value_name = "PATH")]
    pinion_exe: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let exe = cli
        .pinion_exe
        .or_else(locate_pinion_exe)
        .unwrap_or_else(|| PathBuf::from("target/release/pinion"));
    if let Err(e) = run_publish(&cli.args, &exe) {
        eprintln!("publish: {e}");
        std::process::exit(match e {
            pinion_loadgen::LoadgenError::Interrupted => 130,
            pinion_loadgen::LoadgenError::Args(_) => 1,
            _ => 2,
        });
    }
}
