//! Compiles proto/beephost.proto with protox (pure Rust), so a fresh `cargo build` needs no
//! protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/beephost.proto");
    let fds = protox::compile(["beephost.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
