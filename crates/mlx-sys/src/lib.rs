//! Raw bindings to mlx-c, generated at build time against the MLX this crate links (see
//! `build.rs`). The API is the published `mlx-sys` 0.7.0's, so mlx-rs builds unmodified.
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    clippy::all
)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// mlx-rs seeds its default random key with `mach_approximate_time()` from mach-sys, a symbol
/// only Apple's libc has; elsewhere the link would fail. Any clock in nanoseconds serves the
/// purpose (a seed), so provide one under that name.
#[cfg(not(target_vendor = "apple"))]
#[no_mangle]
pub extern "C" fn mach_approximate_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
