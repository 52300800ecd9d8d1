//! Streams, stamps, fences and time: the ordering facts that the commit
//! layer (when may physical memory be reused or given back?) and the
//! policies (when may a free span be reused by another stream?) both need.
//!
//! This layer sits right above the driver: it records and queries fences
//! through [`Driver`](crate::driver::Driver) and knows nothing of pages,
//! spans or arenas.

pub mod clock;
pub mod stamp;
pub mod streams;

pub use clock::Clock;
pub use stamp::{Stamp, StampSet};
pub use streams::Streams;
