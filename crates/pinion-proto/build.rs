//! Compiles `proto/pinion/v1/hub.proto` and `proto/pinion/raft/v1/raft.proto` with protox (pure Rust, so building
//! pinion needs no `protoc`) and generates Rust types with prost.
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("pinion/v1/hub.proto"),
        root.join("pinion/raft/v1/raft.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root]).unwrap_or_else(|e| panic!("{e}"));
    prost_build::Config::new()
        // `bytes` fields as `bytes::Bytes`: decoding from a `Bytes` buffer
        // then slices it (a reference count) instead of copying the payload.
        .bytes(["."])
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("prost-build: {e}"));
}
