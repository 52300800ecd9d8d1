//! Sharing buffers between processes: an engine exports a buffer (weights,
//! a KV cache) and another process maps the same physical memory.
//!
//! - [`SharedBuffer`]: a buffer in an arena's buffers region committed in
//!   shareable runs (a memfd of its own per run on the host backend, POSIX-fd
//!   handles on CUDA);
//! - [`SharedBuffer::export`] → [`ExportedBuffer`]: one descriptor per run;
//! - [`ExportedBuffer::send`] / [`ExportedBuffer::recv`]: over a Unix
//!   socket (`SCM_RIGHTS`), after checking the peer's credentials;
//! - [`ImportedBuffer::new`]: in the other process, reserves address space in
//!   its arena, imports and maps each run with that arena's access list.
//!
//! # Lifetime
//!
//! Release is unmap + close, in every process: dropping a [`SharedBuffer`]
//! (or an [`ImportedBuffer`]) unmaps and releases its handles once the work
//! on them completed, and never frees memory that another process still
//! maps or holds a descriptor of: the kernel (host) or the driver (CUDA)
//! frees the pages when the last user lets go. Shared runs are never reused
//! for other allocations once released (they may still be visible elsewhere),
//! and an arena holding live shared buffers refuses to sleep.
//!
//! # Who receives the memory
//!
//! A descriptor grants its memory to whoever holds it. [`ExportedBuffer::send`]
//! checks `SO_PEERCRED` (pid and uid) against the expected process before
//! sending anything; use a named socket in a private directory
//! ([`listen_private`](crate::driver::share::listen_private), mode 0600 in a
//! 0700 directory) so other users cannot connect at all.
//!
//! ```
//! use gpu_arena::{ArenaConfig, Kind, SharedArena};
//! use gpu_arena::api::ipc::{ExportedBuffer, ImportedBuffer, SharedBuffer};
//! use gpu_arena::driver::{HostDriver, share};
//! use std::os::fd::AsFd;
//! let exporter = SharedArena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
//! let mut buf = SharedBuffer::new(&exporter, 4 << 20)?;
//! buf.as_mut_slice()?[..5].copy_from_slice(b"hello");
//! let (a, b) = share::socket_pair().unwrap();
//! buf.export()?.send_unchecked(a.as_fd()).unwrap();
//! let received = ExportedBuffer::recv(b.as_fd()).unwrap();
//! // Another process would do this; a second arena shows the same.
//! let importer = SharedArena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
//! // SAFETY: the descriptors come from `export` of the host backend.
//! let view = unsafe { ImportedBuffer::new(&importer, &received)? };
//! drop(buf); // the exporter lets go; the importer's memory stays
//! assert_eq!(&view.as_slice()?[..5], b"hello");
//! # Ok::<(), gpu_arena::Error>(())
//! ```

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::api::SharedArena;
use crate::driver::share::{self, MAX_FDS};
use crate::driver::{DevicePtr, Driver, Location, Stream};
use crate::error::{Error, Result};

/// What [`SharedBuffer`] and [`ImportedBuffer`] share (both are a range of
/// this process's arena mapped to shareable runs): `Debug`, the accessors,
/// the slices of host-visible memory, and the release, at once on drop or
/// after a stream's work with `free_on`.
macro_rules! mapped_buffer {
    ($name:ident) => {
        impl<D: Driver> core::fmt::Debug for $name<'_, D> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("base", &format_args!("{:#x}", self.base))
                    .field("len", &self.len)
                    .finish()
            }
        }

        impl<D: Driver> $name<'_, D> {
            /// The base address in this process.
            pub fn as_ptr(&self) -> DevicePtr {
                self.base
            }
            /// Length in bytes (whole pages).
            pub fn len(&self) -> u64 {
                self.len
            }
            /// Always false: the buffer has at least one page.
            pub fn is_empty(&self) -> bool {
                self.len == 0
            }

            /// The contents (host-visible kinds only).
            pub fn as_slice(&self) -> Result<&[u8]> {
                host(self.arena)?;
                // SAFETY: the buffer's runs are mapped with the arena's
                // access and host-visible, and stay mapped as long as `self`.
                Ok(unsafe {
                    core::slice::from_raw_parts(self.base.as_ptr::<u8>(), self.len as usize)
                })
            }

            /// The contents, mutably (host-visible kinds only). Other
            /// processes (the exporter, other importers) may write the same
            /// memory at any time: synchronize with them yourself.
            pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
                host(self.arena)?;
                // SAFETY: as in `as_slice`; `&mut self` makes the borrow
                // unique in this process.
                Ok(unsafe {
                    core::slice::from_raw_parts_mut(self.base.as_mut_ptr::<u8>(), self.len as usize)
                })
            }

            /// Drops the buffer (this process's mapping of it), its memory
            /// last used on `stream`.
            pub fn free_on(self, stream: Stream) {
                let this = core::mem::ManuallyDrop::new(self);
                this.arena
                    .lock()
                    .free_shared_buffer(this.base, this.len, stream);
            }
        }

        impl<D: Driver> Drop for $name<'_, D> {
            fn drop(&mut self) {
                self.arena
                    .lock()
                    .free_shared_buffer(self.base, self.len, Stream::DEFAULT);
            }
        }
    };
}

/// A buffer of an arena committed in shareable runs, ready to export.
pub struct SharedBuffer<'a, D: Driver> {
    arena: &'a SharedArena<D>,
    base: DevicePtr,
    len: u64,
}

mapped_buffer!(SharedBuffer);

impl<'a, D: Driver> SharedBuffer<'a, D> {
    /// A buffer of `len` bytes (rounded up to pages), committed at once in
    /// fresh shareable runs of the arena's memory kind, with the arena's
    /// access list. May call the driver.
    ///
    /// Errors: [`Error::Unsupported`] where the backend cannot create
    /// shareable handles (HIP; CUDA without POSIX-fd handles; pinned host
    /// memory on CUDA).
    pub fn new(arena: &'a SharedArena<D>, len: u64) -> Result<Self> {
        if len == 0 {
            return Err(Error::ZeroSize);
        }
        let mut a = arena.lock();
        let base = a.reserve_shared_buffer(len)?;
        let len = crate::driver::round_up(len, a.page()).unwrap_or(len);
        Ok(SharedBuffer { arena, base, len })
    }

    /// One descriptor per run, for [`ImportedBuffer::new`] in another
    /// process. Each call makes new descriptors; the buffer stays shared
    /// until it is dropped (and, elsewhere, until the importers let go).
    pub fn export(&self) -> Result<ExportedBuffer> {
        export(self.arena, self.base, self.len)
    }
}

/// One descriptor per run of the shared range `base..base+len` of `arena`.
fn export<D: Driver>(arena: &SharedArena<D>, base: DevicePtr, len: u64) -> Result<ExportedBuffer> {
    let a = arena.lock();
    let location = match a.kind() {
        crate::arena::Kind::Device(d) => Location::Device(d),
        crate::arena::Kind::PinnedHost => Location::Host,
    };
    let runs = a
        .export_buffer(base, len)?
        .into_iter()
        .map(|(offset, len, fd)| ExportedRun { offset, len, fd })
        .collect();
    Ok(ExportedBuffer {
        len,
        location,
        runs,
    })
}

fn host<D: Driver>(arena: &SharedArena<D>) -> Result<()> {
    if arena.host_visible() {
        Ok(())
    } else {
        Err(Error::Unsupported(
            "device memory: copy through the driver instead",
        ))
    }
}

/// One run of an exported buffer.
#[derive(Debug)]
pub struct ExportedRun {
    /// Offset in the buffer.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The exported handle.
    pub fd: OwnedFd,
}

/// What an exporter hands to an importer: the buffer's length, where its
/// memory lives, and one descriptor per run (tiling `0..len` in order).
#[derive(Debug)]
pub struct ExportedBuffer {
    /// Length in bytes.
    pub len: u64,
    /// Where the memory lives (the exporter's device numbering).
    pub location: Location,
    /// The runs, in address order.
    pub runs: Vec<ExportedRun>,
}

const MAGIC: &[u8; 8] = b"GPUARIPC";
const VERSION: u64 = 1;
const HEADER_BYTES: usize = 64;
const CHUNK_BYTES: usize = 16 + MAX_FDS * 16;
/// Most runs one exported buffer may have on the wire.
const MAX_RUNS: u64 = 1 << 20;

fn put(buf: &mut [u8], word: usize, v: u64) {
    buf[word * 8..word * 8 + 8].copy_from_slice(&v.to_le_bytes());
}
fn get(buf: &[u8], word: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[word * 8..word * 8 + 8]);
    u64::from_le_bytes(b)
}
fn bad(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl ExportedBuffer {
    /// Sends the buffer over a connected Unix socket to process `peer_pid`,
    /// after checking with `SO_PEERCRED` that the peer is that process,
    /// running as this user: anyone else gets nothing
    /// (`PermissionDenied`). Use a named socket: both ends of a
    /// `socketpair` report the process that created the pair.
    pub fn send(&self, socket: BorrowedFd<'_>, peer_pid: i32) -> io::Result<()> {
        share::check_peer(socket, peer_pid)?;
        self.send_unchecked(socket)
    }

    /// Sends without checking who is at the other end: for a socket whose
    /// peer is known otherwise (a `socketpair` shared only with a child).
    pub fn send_unchecked(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        let mut header = [0u8; HEADER_BYTES];
        header[..8].copy_from_slice(MAGIC);
        put(&mut header, 1, VERSION);
        put(&mut header, 2, self.len);
        let (tag, dev) = match self.location {
            Location::Device(d) => (0, u64::from(d)),
            Location::Host => (1, 0),
        };
        put(&mut header, 3, tag);
        put(&mut header, 4, dev);
        put(&mut header, 5, self.runs.len() as u64);
        share::send_fds(socket, &header, &[])?;
        for chunk in self.runs.chunks(MAX_FDS) {
            let mut msg = [0u8; CHUNK_BYTES];
            put(&mut msg, 0, chunk.len() as u64);
            for (i, r) in chunk.iter().enumerate() {
                put(&mut msg, 2 + 2 * i, r.offset);
                put(&mut msg, 3 + 2 * i, r.len);
            }
            let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(|r| r.fd.as_fd()).collect();
            share::send_fds(socket, &msg, &fds)?;
        }
        Ok(())
    }

    /// Receives a buffer sent by [`ExportedBuffer::send`]. Checks the
    /// message's shape (magic, version, runs tiling the buffer, one
    /// descriptor per run); whether the memory is what it claims is checked
    /// at import (host backend) or trusted (CUDA): receive only from a peer
    /// you trust.
    pub fn recv(socket: BorrowedFd<'_>) -> io::Result<ExportedBuffer> {
        let mut header = [0u8; HEADER_BYTES];
        let mut fds = Vec::new();
        share::recv_fds(socket, &mut header, &mut fds)?;
        if &header[..8] != MAGIC || get(&header, 1) != VERSION {
            return Err(bad(
                "gpu-arena: not a gpu-arena buffer message (magic or version)",
            ));
        }
        if !fds.is_empty() {
            return Err(bad("gpu-arena: descriptors on a buffer header"));
        }
        let len = get(&header, 2);
        let location = match (get(&header, 3), get(&header, 4)) {
            (0, d) => {
                Location::Device(u32::try_from(d).map_err(|_| bad("gpu-arena: bad device number"))?)
            }
            (1, _) => Location::Host,
            _ => return Err(bad("gpu-arena: bad location")),
        };
        let n = get(&header, 5);
        if n == 0 || n > MAX_RUNS {
            return Err(bad("gpu-arena: bad run count"));
        }
        let mut runs = Vec::with_capacity(n as usize);
        let mut at = 0u64;
        while (runs.len() as u64) < n {
            let mut msg = [0u8; CHUNK_BYTES];
            let mut fds = Vec::new();
            share::recv_fds(socket, &mut msg, &mut fds)?;
            let count = get(&msg, 0) as usize;
            if count == 0 || count > MAX_FDS || fds.len() != count {
                return Err(bad("gpu-arena: run chunk and descriptors disagree"));
            }
            if runs.len() as u64 + count as u64 > n {
                return Err(bad("gpu-arena: more runs than announced"));
            }
            for (i, fd) in fds.into_iter().enumerate() {
                let (offset, l) = (get(&msg, 2 + 2 * i), get(&msg, 3 + 2 * i));
                if offset != at || l == 0 {
                    return Err(bad("gpu-arena: runs do not tile the buffer"));
                }
                at = at
                    .checked_add(l)
                    .ok_or_else(|| bad("gpu-arena: runs overflow"))?;
                runs.push(ExportedRun { offset, len: l, fd });
            }
        }
        if at != len {
            return Err(bad("gpu-arena: runs do not cover the buffer"));
        }
        Ok(ExportedBuffer {
            len,
            location,
            runs,
        })
    }
}

/// Another process's buffer, mapped into this process's arena.
pub struct ImportedBuffer<'a, D: Driver> {
    arena: &'a SharedArena<D>,
    base: DevicePtr,
    len: u64,
}

mapped_buffer!(ImportedBuffer);

impl<'a, D: Driver> ImportedBuffer<'a, D> {
    /// Reserves `exported.len` bytes of `arena`'s buffers region, imports
    /// each run's descriptor and maps it there with the arena's access list
    /// (grants made later cover it too). The descriptors stay `exported`'s
    /// (drop it whenever: the mappings hold the memory). On error nothing is
    /// left behind. May call the driver.
    ///
    /// # Safety
    /// `exported` came from [`SharedBuffer::export`] of the same backend (in
    /// this or another process): the host backend checks each descriptor's
    /// size and seals, CUDA trusts them.
    pub unsafe fn new(arena: &'a SharedArena<D>, exported: &ExportedBuffer) -> Result<Self> {
        let runs: Vec<(u64, u64, BorrowedFd<'_>)> = exported
            .runs
            .iter()
            .map(|r| (r.offset, r.len, r.fd.as_fd()))
            .collect();
        // SAFETY: forwarded under the caller's guarantee.
        let base = unsafe {
            arena
                .lock()
                .import_buffer(exported.len, &runs, exported.location)
        }?;
        Ok(ImportedBuffer {
            arena,
            base,
            len: exported.len,
        })
    }

    /// Re-exports the imported memory (to a third process).
    pub fn export(&self) -> Result<ExportedBuffer> {
        export(self.arena, self.base, self.len)
    }
}
