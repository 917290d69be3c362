//! Shared by the integration tests that run the real `pinion` binary.

use std::path::PathBuf;
use std::process::Command;

use pinion_loadgen::locate_pinion_exe;

/// `target/<profile>/pinion`: found next to this test binary, else built
/// with the cargo that runs this test.
pub fn pinion_exe() -> PathBuf {
    if let Some(p) = locate_pinion_exe() {
        return p;
    }
    let release = std::env::current_exe()
        .unwrap()
        .components()
        .any(|c| c.as_os_str() == "release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "pinion-cli", "--bin", "pinion"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build -p pinion-cli");
    assert!(status.success(), "cargo build -p pinion-cli failed");
    locate_pinion_exe().expect("pinion binary after building it")
}
