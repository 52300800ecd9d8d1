//! The integration suite: one binary, one module per area (faster to link).

mod arena_api;
mod arena_model;
mod arena_refusals;
mod bad_input;
mod commit_engine;
mod common;
mod conformance;
#[cfg(feature = "cuda")]
mod cuda_driver;
mod driver_model;
mod global_stress;
#[cfg(feature = "cuda")]
mod gpu_arena;
#[cfg(feature = "hip")]
mod hip_arena;
#[cfg(feature = "hip")]
mod hip_driver;
mod host_driver;
mod layers;
mod offload_ahead;
mod peer_ipc;
mod scratch;
mod sleep_wake;
mod tag_layout;
