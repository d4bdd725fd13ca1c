//! Compiles the `.proto` files with `protox`, a pure-Rust protobuf compiler,
//! so a fresh machine builds without a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["kata/health/v1/health.proto", "runtime/v1/cri_status.proto"];
    for file in &files {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::CompactCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
