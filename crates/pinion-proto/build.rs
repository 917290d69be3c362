//! Compiles `proto/pinion/v1/hub.proto` with protox (pure Rust, so building
//! pinion needs no `protoc`) and generates Rust types with prost.
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("pinion/v1/hub.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root]).unwrap_or_else(|e| panic!("{e}"));
    prost_build::Config::new()
        // `bytes` fields as `bytes::Bytes`: decoding from a `Bytes` buffer
        // then slices it (a reference count) instead of copying the payload.
        .bytes(["."])
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("prost-build: {e}"));
}
