//! The integration suite: one binary, one module per area (faster to link).

mod conformance;
#[cfg(feature = "cuda")]
mod cuda_driver;
#[cfg(feature = "cuda")]
mod gpu_arena;
#[cfg(feature = "hip")]
mod hip_driver;
mod host_driver;
