//! Lets this crate's test binaries find libmlx where crates/mlx-sys linked it, with no
//! LD_LIBRARY_PATH. Only tests and examples are affected: the shipped addon sets its own rpath.
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIB_DIR") {
        // Applies to what this package links: its test, bench and example binaries.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    // Unit tests compare the runtime's version with the headers'.
    if let Ok(version) = std::env::var("DEP_MLX_VERSION") {
        println!("cargo:rustc-env=MLX_HEADERS_VERSION={version}");
    }
}
