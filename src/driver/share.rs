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
//! they may allocate.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Most descriptors one message carries.
pub const MAX_FDS: usize = 64;

/// Bytes of control buffer for [`MAX_FDS`] descriptors.
// SAFETY: CMSG_SPACE is pure arithmetic on its argument.
const CMSG_BYTES: usize = unsafe { libc::CMSG_SPACE((MAX_FDS * 4) as u32) } as usize;

/// A control-message buffer aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Cmsg([u8; CMSG_BYTES]);

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
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out-pointers of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCredentials {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Checks that the peer of `socket` is process `pid`, running as this
/// process's effective user. `PermissionDenied` (saying who it was) if not.
pub fn check_peer(socket: BorrowedFd<'_>, pid: i32) -> io::Result<PeerCredentials> {
    let cred = peer_credentials(socket)?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
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
    let mut cmsg = Cmsg([0; CMSG_BYTES]);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = (fds.len() * core::mem::size_of::<libc::c_int>()) as u32;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        // SAFETY: pure arithmetic.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as _;
        // SAFETY: 1. msg_control points to CMSG_BYTES >= msg_controllen
        // aligned bytes, so the first header fits; 2. CMSG_DATA of it has
        // room for `fds.len()` ints (CMSG_SPACE above).
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(data_len) as _;
            let data = libc::CMSG_DATA(hdr).cast::<libc::c_int>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    let n = loop {
        // SAFETY: msg points to live buffers described above.
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // A stream socket may take part of the bytes; the descriptors went with
    // the first of them.
    let mut sent = n;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: `rest` is a live slice of `rest.len()` bytes.
        let n = unsafe {
            libc::send(
                socket.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
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
        let mut cmsg = Cmsg([0; CMSG_BYTES]);
        let rest = &mut buf[got..];
        let mut iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        // SAFETY: an all-zero msghdr is a valid empty header.
        let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_BYTES as _;
        // SAFETY: msg points to live, writable buffers of the lengths given.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Take ownership of every descriptor first, so none leaks on error.
        let mut bad_control = false;
        // SAFETY: the kernel filled msg_control with msg_controllen bytes of
        // well-formed headers; CMSG_NXTHDR stays inside that buffer.
        unsafe {
            let mut hdr = libc::CMSG_FIRSTHDR(&msg);
            while !hdr.is_null() {
                if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                    let payload = (*hdr).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let data = libc::CMSG_DATA(hdr).cast::<libc::c_int>();
                    for i in 0..payload / core::mem::size_of::<libc::c_int>() {
                        let raw = data.add(i).read_unaligned();
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                } else {
                    bad_control = true;
                }
                hdr = libc::CMSG_NXTHDR(&msg, hdr);
            }
        }
        if msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 || bad_control {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "gpu-arena: a message or its descriptors were cut off, or unexpected control data arrived",
            ));
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "gpu-arena: the peer closed the socket in the middle of a message",
            ));
        }
        got += n as usize;
    }
    Ok(())
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets (close-on-exec), for
/// passing descriptors to a child process or another thread.
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut sv = [0 as libc::c_int; 2];
    // SAFETY: `sv` has room for the two descriptors.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) })
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
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        assert_eq!(peer_credentials(a.as_fd()).unwrap().pid, me);
        check_peer(a.as_fd(), me).unwrap();
        let e = check_peer(a.as_fd(), me + 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        drop(a);
        let e = recv_fds(b.as_fd(), &mut buf, &mut fds).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
