//! Engine errors become JS `Error`s whose `code` is the engine's stable code (napi-rs sets a
//! thrown error's `code` from the error's status string). A panic in the engine becomes an
//! `INTERNAL_ERROR` instead of unwinding across the FFI boundary.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// The error every exported function returns.
pub type JsError = napi::Error<String>;
pub type JsResult<T> = napi::Result<T, String>;

pub fn to_js(e: mlx_node_core::Error) -> JsError {
    JsError::new(e.code.as_str().to_owned(), e.message)
}

/// Runs engine code, turning a panic into an `INTERNAL_ERROR` engine error.
pub fn catch_panic<T>(f: impl FnOnce() -> mlx_node_core::Result<T>) -> mlx_node_core::Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(mlx_node_core::Error::new(
            mlx_node_core::ErrorCode::Internal,
            format!("internal error: {what}"),
        ))
    })
}

/// Runs engine code on the JS thread, translating its errors and catching its panics.
pub fn guard<T>(f: impl FnOnce() -> mlx_node_core::Result<T>) -> JsResult<T> {
    catch_panic(f).map_err(to_js)
}
