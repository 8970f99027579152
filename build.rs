//! The Node addon's link settings: N-API symbols (napi-build) and where to find libmlx.
fn main() {
    napi_build::setup();

    // What ships: the addon beside `mlx-runtime/`, a copy of the MLX prefix's files in the
    // layout of the PyPI wheel (`mlx/lib/libmlx.*` with its bundled libraries in `*.libs/`,
    // which libmlx's own rpath expects two levels up). scripts/build.mjs lays it out.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let origin = if os == "macos" {
        "@loader_path"
    } else {
        "$ORIGIN"
    };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,{origin}/mlx-runtime/mlx/lib");
    // A build-machine path is only acceptable in development builds.
    if std::env::var("PROFILE").as_deref() == Ok("debug") {
        if let Ok(dir) = std::env::var("DEP_MLX_LIB_DIR") {
            println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,{dir}");
        }
    }
}
