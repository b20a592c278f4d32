//! Generates the wire types from `proto/loam.proto`. This is the only crate
//! that runs prost-build; every other crate uses `loam_common::pb`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/loam.proto");
    prost_build::Config::new()
        .bytes(["."])
        .compile_protos(&["proto/loam.proto"], &["proto"])?;
    Ok(())
}
