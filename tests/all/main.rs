//! The integration suite: one binary, one module per area (faster to link).

#[cfg(feature = "hip")]
mod hip_driver;
mod host_driver;
