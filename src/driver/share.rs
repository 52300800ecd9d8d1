//! Passing exported handles (POSIX file descriptors) to another process over
//! a Unix socket, and making sure only the intended process gets them.
//!
//! - [`send_fds`] / [`recv_fds`]: a fixed-size byte message with up to
//!   [`MAX_FDS`] descriptors attached (`SCM_RIGHTS`). The receiver asks for
//!   exactly the length the sender sent, so the same code works over
//!   `SOCK_STREAM` (std's `UnixStream`) and `SOCK_SEQPACKET` sockets.
//!   Received descriptors are close-on-exec (`MSG_CMSG_CLOEXEC`).
//! - [`peer_credentials`] / [`check_peer`]: `SO_PEERCRED` on a connected
//!   socket gives the pid and uid of the process that connected (named
//!   socket) or created the pair (`socketpair`). Check them **before**
//!   sending: a descriptor, once received, grants its memory to whoever
//!   holds it. Note that both ends of a `socketpair` report the process that
//!   called `socketpair`, so after a `fork` the parent cannot tell its child
//!   apart that way: use a named socket (see [`listen_private`]) when the
//!   peer's pid must be checked.
//! - [`listen_private`]: a named socket in a directory only this user can
//!   enter (mode 0700), the socket itself mode 0600, so other users cannot
//!   even connect; the pid check then keeps out other processes of the same
//!   user.
//!
//! These are setup paths (once per shared buffer), not allocator hot paths:
//! they may allocate. The system calls go through `rustix`, so this module
//! has no unsafe code of its own.
#![deny(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// Most descriptors one message carries.
pub const MAX_FDS: usize = 64;

/// Bytes of control buffer for [`MAX_FDS`] descriptors.
const CMSG_BYTES: usize = rustix::cmsg_space!(ScmRights(MAX_FDS));

/// Who is at the other end of a connected Unix socket (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id (at `connect`, or at `socketpair`).
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// The credentials of the peer of `socket` (a connected Unix socket).
pub fn peer_credentials(socket: BorrowedFd<'_>) -> io::Result<PeerCredentials> {
    let cred = rustix::net::sockopt::socket_peercred(socket)?;
    Ok(PeerCredentials {
        pid: cred.pid.as_raw_nonzero().get(),
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
    })
}

/// Checks that the peer of `socket` is process `pid`, running as this
/// process's effective user. `PermissionDenied` (saying who it was) if not.
pub fn check_peer(socket: BorrowedFd<'_>, pid: i32) -> io::Result<PeerCredentials> {
    let cred = peer_credentials(socket)?;
    let uid = rustix::process::geteuid().as_raw();
    if cred.pid != pid || cred.uid != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "gpu-arena: refusing to send shared memory descriptors: the peer is pid {} uid {}, \
                 expected pid {pid} uid {uid}",
                cred.pid, cred.uid
            ),
        ));
    }
    Ok(cred)
}

/// Binds a listening socket at `dir/name`, creating `dir` with mode 0700 if
/// it does not exist, and sets the socket's mode to 0600. A stale socket
/// file of that name is replaced.
pub fn listen_private(dir: &Path, name: &str) -> io::Result<UnixListener> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Sends `bytes` with `fds` attached (at most [`MAX_FDS`]) on a connected
/// Unix socket. Blocks until everything was handed to the kernel. The
/// descriptors stay open here: the receiver gets duplicates.
pub fn send_fds(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "gpu-arena: too many descriptors for one message",
        ));
    }
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "gpu-arena: a message carrying descriptors needs at least one byte",
        ));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); CMSG_BYTES];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "gpu-arena: the descriptors do not fit the control buffer (bug)",
        ));
    }
    let iov = [IoSlice::new(bytes)];
    let n = rustix::io::retry_on_intr(|| {
        rustix::net::sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL)
    })?;
    // A stream socket may take part of the bytes; the descriptors went with
    // the first of them.
    let mut sent = n;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        sent += rustix::io::retry_on_intr(|| rustix::net::send(socket, rest, SendFlags::NOSIGNAL))?;
    }
    Ok(())
}

/// Receives exactly `buf.len()` bytes (one message of [`send_fds`] of that
/// length) and the descriptors attached, appended to `fds` (close-on-exec).
///
/// Errors: `UnexpectedEof` when the peer closed first; `InvalidData` when
/// descriptors were cut off (more than [`MAX_FDS`]) or the control data was
/// not `SCM_RIGHTS`; any descriptor received before an error is closed.
pub fn recv_fds(socket: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
    let first = fds.len();
    let r = recv_fds_inner(socket, buf, fds);
    if r.is_err() {
        fds.truncate(first);
    }
    r
}

fn recv_fds_inner(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let mut space = [MaybeUninit::<u8>::uninit(); CMSG_BYTES];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let msg = rustix::io::retry_on_intr(|| {
            rustix::net::recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        })?;
        // Take ownership of every descriptor first, so none leaks on error
        // (the buffer closes any left in it when dropped).
        let mut bad_control = false;
        for m in control.drain() {
            match m {
                RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
                _ => bad_control = true,
            }
        }
        if msg
            .flags
            .intersects(ReturnFlags::CTRUNC | ReturnFlags::TRUNC)
            || bad_control
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "gpu-arena: a message or its descriptors were cut off, or unexpected control data arrived",
            ));
        }
        if msg.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "gpu-arena: the peer closed the socket in the middle of a message",
            ));
        }
        got += msg.bytes;
    }
    Ok(())
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets (close-on-exec), for
/// passing descriptors to a child process or another thread.
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_travel_and_stay_usable() {
        let (a, b) = socket_pair().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        send_fds(a.as_fd(), b"hello", &[w.as_fd(), r.as_fd()]).unwrap();
        drop((r, w));
        let mut buf = [0u8; 5];
        let mut fds = Vec::new();
        recv_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(fds.len(), 2);
        let mut w = std::fs::File::from(fds.remove(0));
        let mut r = std::fs::File::from(fds.remove(0));
        use std::io::{Read, Write};
        w.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        r.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        // socketpair: the peer is this very process.
        let me = rustix::process::getpid().as_raw_nonzero().get();
        assert_eq!(peer_credentials(a.as_fd()).unwrap().pid, me);
        check_peer(a.as_fd(), me).unwrap();
        let e = check_peer(a.as_fd(), me + 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        drop(a);
        let e = recv_fds(b.as_fd(), &mut buf, &mut fds).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
