//! Lets this crate's test binaries find libmlx where crates/mlx-sys linked it (as in
//! crates/core/build.rs).
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
