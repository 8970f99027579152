//! Our CPU kernels under MLX (in progress).
