//! Helpers shared by the test modules.

/// The CUDA driver of device 0, or `None` after printing why the calling
/// GPU test is skipped (no GPU here or in CI).
#[cfg(feature = "cuda")]
pub fn cuda() -> Option<gpu_arena::driver::cuda::CudaDriver> {
    match gpu_arena::driver::cuda::CudaDriver::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("skipped: no usable CUDA device ({e})");
            None
        }
    }
}
