fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: the build needs nothing but cargo.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_protos(&["proto/internal.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/internal.proto");
    Ok(())
}
