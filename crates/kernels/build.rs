//! Compiles our C++ MLX primitives and kernels (csrc/) against exactly the MLX headers that
//! crates/mlx-sys builds and links against (DEP_MLX_INCLUDE / DEP_MLX_DEFINES), with the same
//! C++ standard library as libmlx (libstdc++ with its default, new ABI on Linux).
use std::env;
use std::path::PathBuf;

const SOURCES: [&str; 8] = [
    "csrc/attention.cpp",
    "csrc/qmm.cpp",
    "csrc/gated_delta.cpp",
    "csrc/pointwise.cpp",
    "csrc/pool.cpp",
    "csrc/primitives.cpp",
    "csrc/profile.cpp",
    "csrc/rope.cpp",
];

fn main() {
    let include = env::var_os("DEP_MLX_INCLUDE")
        .expect("DEP_MLX_INCLUDE is unset: mlx-node-kernels must depend on mlx-sys directly");
    let defines = env::var("DEP_MLX_DEFINES").unwrap_or_default();

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        // The kernels are the point of this crate: optimize them in debug builds too.
        .opt_level(3)
        .include("csrc")
        .warnings(true)
        .extra_warnings(false);
    for dir in env::split_paths(&include) {
        // MLX's headers are not ours to keep warning-free.
        build.flag("-isystem").flag(dir.to_string_lossy().as_ref());
    }
    for define in defines.split_whitespace() {
        match define.split_once('=') {
            Some((name, value)) => build.define(name, value),
            None => build.define(define, None),
        };
    }
    // GCC warns (-Wpsabi) that the AVX2 helpers returning __m256 have another ABI than
    // baseline code would; they are only ever inlined into functions of the same target.
    build.flag_if_supported("-Wno-psabi");
    // GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own `_mm512_undefined_*`
    // placeholders (GCC bug 105593) wherever the conversions are inlined.
    build.flag_if_supported("-Wno-maybe-uninitialized");
    for source in SOURCES {
        build.file(source);
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-changed=csrc/kernels.h");
    build.compile("mlx_node_kernels");

    // Tests, examples and benches of this package find libmlx where mlx-sys linked it.
    if let Some(dir) = env::var_os("DEP_MLX_LIB_DIR").map(PathBuf::from) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
}
