//! The `mlx` command line without Node (`cargo run --release -p mlx-node-convert --example mlx
//! -- convert -i … -o …`): what `npx mlx` runs, for timing and debugging the Rust side alone.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(mlx_node_convert::cli::run(&args));
}
