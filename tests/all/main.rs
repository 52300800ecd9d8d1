//! The integration suite: one binary, one module per area (faster to link).

mod arena_api;
mod arena_model;
#[cfg(feature = "cuda")]
mod cuda_driver;
#[cfg(feature = "hip")]
mod hip_driver;
mod host_driver;
