//! lhama's CUDA backend. The CUDA driver and NVRTC are opened at run time
//! (cudarc's dynamic loading), so the workspace builds and its tests run on
//! machines with no CUDA at all; every entry point checks for them first and
//! answers with a `CudaError` instead of panicking.

pub mod backend;
pub mod compile;
pub mod gemm_bench;
pub mod kernels;

pub use backend::{CudaBackend, CudaOptions};
pub use kernels::Precision;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver: libcuda could not be loaded (is the NVIDIA driver installed?)")]
    NoDriver,
    #[error(
        "NVRTC (libnvrtc.so.13) could not be loaded: install the CUDA 13 runtime compiler or set LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    #[error("no CUDA device found")]
    NoDevice,
    #[error("GPU {name} has compute capability {major}.{minor}; lhama's kernels need 8.0 or newer")]
    TooOld {
        name: String,
        major: i32,
        minor: i32,
    },
    #[error("not enough GPU memory: {what} needs {need_mib} MiB, {free_mib} MiB are free")]
    OutOfMemory {
        what: String,
        need_mib: usize,
        free_mib: usize,
    },
    #[error("the CUDA backend does not support this model: {0}")]
    Unsupported(String),
    #[error("compiling the kernels with NVRTC failed: {0}")]
    Compile(String),
    #[error("CUDA driver error: {0}")]
    Driver(String),
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(e.to_string())
    }
}

/// Whether the CUDA driver library is present (no device access).
pub fn driver_available() -> bool {
    // SAFETY: only probes for the shared library; nothing is called in it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// A usable device: driver present, at least one GPU, compute capability
/// 8.0 or newer. Returns its name and capability.
pub fn probe() -> Result<(String, i32, i32), CudaError> {
    if !driver_available() {
        return Err(CudaError::NoDriver);
    }
    let count = cudarc::driver::CudaContext::device_count()?;
    if count < 1 {
        return Err(CudaError::NoDevice);
    }
    let ctx = cudarc::driver::CudaContext::new(0)?;
    let name = ctx.name()?;
    let (major, minor) = ctx.compute_capability()?;
    if major < 8 {
        return Err(CudaError::TooOld { name, major, minor });
    }
    Ok((name, major, minor))
}
