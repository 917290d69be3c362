//! `pinion token keygen | issue | verify`: keys and tokens for a hub with
//! authentication on (see `pinion_auth`).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use pinion_auth::{Keys, Permissions, Rules, Verifier, VerifyingKey};

use crate::failure::Failure;

/// `pinion token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a signing key: `FILE` (private, mode 0600) and, for Ed25519,
    /// `FILE.pub` (the public key hubs verify with).
    Keygen(KeygenArgs),
    /// Mint a token: prints it on stdout.
    Issue(IssueArgs),
    /// Check a token against a key: prints its claims as JSON, or why it
    /// is refused (exit code 9).
    Verify(VerifyArgs),
}

/// `pinion token keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key (never overwritten).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The algorithm: Ed25519 (EdDSA; hubs hold only the public key) or an
    /// HS256 shared secret.
    #[arg(long, value_enum, default_value = "ed25519")]
    pub alg: KeyAlg,
}

/// Key algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyAlg {
    /// EdDSA with Ed25519.
    Ed25519,
    /// HMAC-SHA256 with a random 32-byte secret.
    Hs256,
}

/// `pinion token issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The signing key (from `pinion token keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Topic prefix the holder may publish to (repeatable; "" = every topic).
    #[arg(long = "pub", value_name = "PREFIX")]
    pub publish: Vec<String>,
    /// Topic prefix the holder may not publish to (repeatable; wins over --pub).
    #[arg(long = "deny-pub", value_name = "PREFIX")]
    pub deny_publish: Vec<String>,
    /// Topic prefix the holder may subscribe to (repeatable; "" = every topic).
    #[arg(long = "sub", value_name = "PREFIX")]
    pub subscribe: Vec<String>,
    /// Topic prefix the holder may not subscribe to (repeatable).
    #[arg(long = "deny-sub", value_name = "PREFIX")]
    pub deny_subscribe: Vec<String>,
    /// The dashboard, /metrics and /stats.
    #[arg(long)]
    pub admin: bool,
    /// Who the token names (its `sub` claim).
    #[arg(long, value_name = "NAME", default_value = "")]
    pub name: String,
    /// How long it is valid: seconds, or with a unit: 30s, 15m, 1h, 7d.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    pub ttl: u64,
}

/// `pinion token verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The key to check with: a public key (`FILE.pub`), a private key or
    /// an HS256 secret file.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The token (`-` reads it from standard input).
    pub token: String,
}

/// Parses `3600`, `30s`, `15m`, `1h`, `7d` into seconds.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('d') => (&s[..s.len() - 1], 86_400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 3600, 30s, 15m, 1h, 7d)"))
}

fn key_failure(e: pinion_auth::AuthError) -> Failure {
    Failure::usage(format!("{e}"))
}

/// Runs `pinion token …`.
pub fn run(c: TokenCommand) -> Result<(), Failure> {
    match c {
        TokenCommand::Keygen(a) => {
            let keys = match a.alg {
                KeyAlg::Ed25519 => Keys::generate_ed25519(),
                KeyAlg::Hs256 => Keys::generate_hs256(),
            }
            .map_err(key_failure)?;
            for f in keys.write(&a.out).map_err(key_failure)? {
                crate::say(&format!("wrote {}", f.display()));
            }
            Ok(())
        }
        TokenCommand::Issue(a) => {
            let keys = Keys::from_file(&a.key).map_err(key_failure)?;
            let perms = Permissions {
                publish: Rules::allow(a.publish).deny(a.deny_publish),
                subscribe: Rules::allow(a.subscribe).deny(a.deny_subscribe),
                admin: a.admin,
            };
            let token = keys
                .issue(&a.name, &perms, Verifier::now(), a.ttl)
                .map_err(key_failure)?;
            println!("{token}");
            Ok(())
        }
        TokenCommand::Verify(a) => {
            let key = VerifyingKey::from_file(&a.key).map_err(key_failure)?;
            let token = if a.token == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| {
                    Failure::usage(format!("cannot read the token from standard input: {e}"))
                })?;
                s
            } else {
                a.token
            };
            match Verifier::new(vec![key]).verify(token.trim(), Verifier::now()) {
                Ok(c) => {
                    println!(
                        "{}",
                        serde_json::to_string(&c).unwrap_or_else(|_| "{}".into())
                    );
                    Ok(())
                }
                Err(e) => Err(Failure::new(
                    crate::exit::NACKED,
                    format!("token refused: {e}"),
                )),
            }
        }
    }
}
