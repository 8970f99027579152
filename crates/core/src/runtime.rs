//! What MLX this process runs on: its version, the default device and the compute backend.

use std::ffi::CStr;

use mlx_rs::{Device, DeviceType, Dtype};

use crate::{Error, ErrorCode, Result};

/// The compute backend MLX uses for the default device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// MLX's CPU backend (Linux, or macOS without Metal).
    Cpu,
    /// Apple's Metal GPU backend.
    Metal,
    /// The CUDA backend of a CUDA build of MLX.
    Cuda,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Metal => "metal",
            Backend::Cuda => "cuda",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlxInfo {
    /// The version libmlx reports at run time (not the headers we compiled against).
    pub version: String,
    /// MLX's name for the default device, e.g. `cpu` or `gpu`, with its index.
    pub device: String,
    pub backend: Backend,
}

/// Calls an mlx-c function that reports failure through a non-zero status.
fn check(status: i32, what: &str) -> Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::Mlx,
            format!("{what} failed (status {status})"),
        ))
    }
}

fn runtime_version() -> Result<String> {
    // SAFETY: mlx_string_new returns an owned, empty string that mlx_version fills; its data
    // pointer is a NUL-terminated buffer owned by the string until mlx_string_free.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        let status = mlx_sys::mlx_version(&mut s);
        let version = CStr::from_ptr(mlx_sys::mlx_string_data(s))
            .to_string_lossy()
            .into_owned();
        mlx_sys::mlx_string_free(s);
        check(status, "mlx_version")?;
        Ok(version)
    }
}

fn is_available(probe: unsafe extern "C" fn(*mut bool) -> i32, what: &str) -> Result<bool> {
    let mut available = false;
    // SAFETY: the probe writes one bool through the pointer it is given.
    check(unsafe { probe(&mut available) }, what)?;
    Ok(available)
}

pub fn mlx_info() -> Result<MlxInfo> {
    let device = Device::default();
    let kind = device.get_type()?;
    let backend = match kind {
        DeviceType::Cpu => Backend::Cpu,
        DeviceType::Gpu => {
            if is_available(mlx_sys::mlx_metal_is_available, "mlx_metal_is_available")? {
                Backend::Metal
            } else if is_available(mlx_sys::mlx_cuda_is_available, "mlx_cuda_is_available")? {
                Backend::Cuda
            } else {
                return Err(Error::new(
                    ErrorCode::Mlx,
                    "the default device is a GPU, but neither Metal nor CUDA is available",
                ));
            }
        }
    };
    let name = match kind {
        DeviceType::Cpu => "cpu",
        DeviceType::Gpu => "gpu",
    };
    Ok(MlxInfo {
        version: runtime_version()?,
        device: format!("{name}:{}", device.get_index()?),
        backend,
    })
}

/// Parses a dtype name as users and config files spell it.
pub fn parse_dtype(name: &str) -> Result<Dtype> {
    Ok(match name {
        "float32" | "f32" => Dtype::Float32,
        "bfloat16" | "bf16" => Dtype::Bfloat16,
        "float16" | "f16" => Dtype::Float16,
        _ => {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("dtype `{name}` is not one of float32, bfloat16, float16"),
            ))
        }
    })
}

/// The name [`parse_dtype`] reads back.
pub fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::Float32 => "float32",
        Dtype::Bfloat16 => "bfloat16",
        Dtype::Float16 => "float16",
        _ => "other",
    }
}

/// The activation dtype when the caller names none: float32 on the CPU backend (MLX emulates
/// bf16 arithmetic there, 8–9× slower per decode step), the model's own dtype on a GPU.
pub fn default_compute_dtype(model_dtype: Option<&str>) -> Dtype {
    let on_gpu = mlx_info().is_ok_and(|i| i.backend != Backend::Cpu);
    match model_dtype.map(parse_dtype) {
        Some(Ok(dtype)) if on_gpu => dtype,
        _ if on_gpu => Dtype::Bfloat16,
        _ => Dtype::Float32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_mlx_we_link() {
        let info = mlx_info().unwrap();
        // The version of the headers crates/mlx-sys compiled against; the runtime must agree.
        assert_eq!(info.version, env!("MLX_HEADERS_VERSION"));
        #[cfg(target_os = "linux")]
        {
            assert_eq!(info.backend, Backend::Cpu);
            assert_eq!(info.device, "cpu:0");
        }
    }
}
