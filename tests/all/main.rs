//! The integration suite: one binary, one module per area (faster to link).

mod host_driver;
