//! HIP backend (placeholder, being written).
