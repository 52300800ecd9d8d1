//! What the api layer's unit tests share: a host arena, and a way to ask
//! whether memory is readable without faulting.

use crate::arena::{ArenaConfig, Kind, SharedArena};
use crate::driver::HostDriver;

/// A shared arena on a fresh host backend, default settings.
pub(crate) fn host_arena() -> SharedArena<HostDriver> {
    SharedArena::new(
        HostDriver::new().expect("host backend"),
        Kind::Device(0),
        ArenaConfig::default(),
    )
    .expect("host arena")
}

/// Whether the CPU can read `len` bytes at `p` now, without touching them
/// from Rust: the kernel copies them into a pipe, or says EFAULT.
pub(crate) fn readable(p: *const u8, len: usize) -> bool {
    let mut fds = [0; 2];
    // SAFETY: `fds` holds two descriptors for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: write(2) reads `p` in the kernel: an unmapped or inaccessible
    // page gives EFAULT, never a fault in this process.
    let n = unsafe { libc::write(fds[1], p.cast(), len) };
    // SAFETY: both descriptors are ours and open.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    n == len as isize
}
