//! The `pinion` command: argument types and command implementations.
//! `main.rs` only calls [`main`].

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use pinion::{blocking::Socket, Protocol};

/// pinion: Scalability Protocols sockets, wire-compatible with NNG and nanomsg.
#[derive(Debug, Parser)]
#[command(name = "pinion", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Two sockets talking: a REP server and a REQ client over TCP, then
    /// PUSH/PULL, printing each exchange and the round-trip times.
    ///
    /// Example: `pinion demo --count 5`
    Demo {
        /// Requests to make.
        #[arg(long, default_value_t = 5)]
        count: u32,
        /// Address the REP socket listens on (port 0: any free port).
        #[arg(long, default_value = "tcp://127.0.0.1:0")]
        url: String,
    },
}

/// Exit codes.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A socket operation failed.
    pub const FAILED: i32 = 1;
}

/// Parses the arguments, runs the command, returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("pinion: {e}");
            exit::FAILED
        }
    }
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> Result<(), pinion::Error> {
    match cli.command {
        Command::Demo { count, url } => demo(count, &url),
    }
}

fn demo(count: u32, url: &str) -> Result<(), pinion::Error> {
    let rt = pinion::Runtime::global();
    println!(
        "runtime: {} cores, pinned to CPUs {:?}",
        rt.cores(),
        rt.cpus()
    );

    let rep = Socket::new(Protocol::Rep0)?;
    let ep = rep.listen(url)?;
    let url = ep.url().to_string();
    println!("rep  listening on {url}");
    let server = std::thread::spawn(move || -> Result<(), pinion::Error> {
        for _ in 0..count {
            let req = rep.recv()?;
            let reply = format!("pong: {}", String::from_utf8_lossy(&req));
            rep.send(reply)?;
        }
        Ok(())
    });

    let req = Socket::new(Protocol::Req0)?;
    req.dial(&url)?;
    println!("req  connected to {url}");
    for i in 0..count {
        let t = Instant::now();
        req.send(format!("ping {i}"))?;
        let reply = req.recv()?;
        println!(
            "req  got {:?} in {:?}",
            String::from_utf8_lossy(&reply),
            t.elapsed()
        );
    }
    server
        .join()
        .map_err(|_| pinion::Error::Bug("demo server thread panicked"))??;

    let pull = Socket::new(Protocol::Pull0)?;
    let ep = pull.listen("tcp://127.0.0.1:0")?;
    let push = Socket::new(Protocol::Push0)?;
    push.dial(&ep.url().to_string())?;
    let n = 100_000u32;
    let t = Instant::now();
    let sender = std::thread::spawn(move || -> Result<(), pinion::Error> {
        for i in 0..n {
            push.send(i.to_le_bytes().to_vec())?;
        }
        Ok(())
    });
    for i in 0..n {
        let m = pull.recv_timeout(Some(Duration::from_secs(10)))?;
        if m[..] != i.to_le_bytes() {
            return Err(pinion::Error::Bug("demo: push/pull out of order"));
        }
    }
    sender
        .join()
        .map_err(|_| pinion::Error::Bug("demo sender thread panicked"))??;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "push/pull: {n} messages of 4 bytes in {secs:.3} s ({:.0} msg/s)",
        n as f64 / secs
    );
    Ok(())
}
