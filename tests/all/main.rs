//! The integration suite: one binary, one module per area (faster to link).

mod cuda_driver;
mod host_driver;
