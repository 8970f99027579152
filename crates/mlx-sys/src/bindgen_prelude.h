/* Read by bindgen before mlx-c's headers.
 *
 * mlx/c/half.h declares float16_t and bfloat16_t (and HAS_FLOAT16 / HAS_BFLOAT16, which guard
 * the f16/bf16 accessors) only on aarch64. mlx-rs uses those accessors on every target and
 * expects the Rust types bindgen produces on macOS: `__BindgenFloat16` for float16_t and `u16`
 * for bfloat16_t. Declaring both here gives the same bindings on x86_64. */
#ifndef MLX_SYS_BINDGEN_PRELUDE_H
#define MLX_SYS_BINDGEN_PRELUDE_H
#if !defined(__aarch64__)
#define HAS_FLOAT16
#define HAS_BFLOAT16
typedef __fp16 float16_t;
typedef unsigned short bfloat16_t;
#endif
#endif
