fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: the build needs nothing but cargo.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("edgefabric_descriptor.bin"))
        .compile_protos(&["proto/edgefabric/v1/kv.proto"], &["proto"])?;
    // etcd's KV API, for the load generator's side-by-side runs (client only).
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["../benches/proto/etcd/kv.proto"], &["../benches/proto"])?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=../benches/proto");
    Ok(())
}
