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

/// Runs engine code, translating its errors and catching its panics.
pub fn guard<T>(f: impl FnOnce() -> mlx_node_core::Result<T>) -> JsResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(to_js),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(JsError::new(
                "INTERNAL_ERROR".into(),
                format!("internal error: {what}"),
            ))
        }
    }
}
