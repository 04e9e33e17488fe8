//! Listening sockets that a restarted node can take back at once.
//!
//! glommio's `TcpListener::bind` sets `SO_REUSEPORT` only. The connections
//! such a listener accepted inherit its options; when the node dies (or
//! closes them first), they linger in TIME_WAIT for about a minute, and
//! without `SO_REUSEADDR` on both sides they block the next bind of the port
//! with `EADDRINUSE`: a node killed with `kill -9` could not be restarted
//! (by hand, by systemd's `Restart=on-failure`, by Docker's restart policy)
//! until TIME_WAIT ended. Every listener of the node is therefore made here,
//! with `SO_REUSEADDR` always set.
//!
//! `SO_REUSEADDR` never lets two *listening* sockets share a port, so a
//! second live node on the same port is still refused: by the kernel for
//! [`PortSharing::Exclusive`] listeners, and by `node`'s start-up probe for
//! [`PortSharing::AllCores`] ones (where `SO_REUSEPORT` would otherwise let
//! a second process in).
//!
//! A node that has just exited can still hold a listening socket for a
//! moment (seen in CI as `EADDRINUSE` on a restart right after a clean exit;
//! the likely holder is the kernel's asynchronous io_uring teardown, an
//! accept still queued there keeping the socket open). Binding therefore
//! retries `EADDRINUSE` for [`RESTART_BIND_GRACE`]; a live node holds its
//! ports for good and is still refused, after the grace.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Connections the kernel queues for a listener before `accept` takes them
/// (as glommio's own `bind`; capped by `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 1024;

/// How long binding a port retries `EADDRINUSE` (see the module docs).
pub const RESTART_BIND_GRACE: Duration = Duration::from_secs(2);

/// Runs `bind` until it does not fail with `EADDRINUSE`, or
/// [`RESTART_BIND_GRACE`] has passed. Start-up only: it sleeps the thread.
pub fn retry_while_in_use<T>(mut bind: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let deadline = Instant::now() + RESTART_BIND_GRACE;
    loop {
        match bind() {
            Err(error) if error.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Whether the cores of this node share the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSharing {
    /// Every core binds the same address (`SO_REUSEPORT`) and the kernel
    /// spreads new connections over them: client and RESP ports.
    AllCores,
    /// One socket owns the port: each core's Raft peer port.
    Exclusive,
}

/// Fails with `EADDRINUSE` if a socket already listens on `addr`, without
/// ever listening itself: the socket is bound (with `SO_REUSEADDR`, so the
/// TIME_WAIT connections of a crashed node do not count) and closed. Had
/// it listened, as `std::net::TcpListener::bind` does, a client connecting
/// in that instant would complete its handshake into the probe's backlog
/// and be reset when the probe closed (seen by benchmark scripts that
/// connect as soon as the port opens). `SO_REUSEADDR` never lets a socket
/// bind a port another socket listens on, whatever that one's options.
pub fn probe_port_is_free(addr: SocketAddr) -> io::Result<()> {
    bound_socket(addr, PortSharing::Exclusive).map(drop)
}

/// A TCP socket bound to `addr` with `SO_REUSEADDR` (and `SO_REUSEPORT`
/// when `sharing` is [`PortSharing::AllCores`]), not listening yet.
fn bound_socket(addr: SocketAddr, sharing: PortSharing) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if sharing == PortSharing::AllCores {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket)
}

/// A glommio listener on `addr` bound with `SO_REUSEADDR` (and
/// `SO_REUSEPORT` when `sharing` is [`PortSharing::AllCores`]). Must be
/// called on a glommio executor, which the listener then belongs to.
pub fn bind(addr: SocketAddr, sharing: PortSharing) -> io::Result<TcpListener> {
    let socket = retry_while_in_use(|| bound_socket(addr, sharing))?;
    socket.listen(LISTEN_BACKLOG)?;
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` is a TCP socket this function created, bound and put in
    // the listening state; `into_raw_fd` gave up its ownership, which passes
    // to the glommio listener (closed when that is dropped). Nothing else
    // holds the descriptor.
    #[allow(unsafe_code)]
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener made as the cores make theirs (`SO_REUSEADDR` and
    /// `SO_REUSEPORT`) on an ephemeral loopback port.
    fn listening_with_reuse_port() -> (Socket, SocketAddr) {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket
            .bind(&SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 0))))
            .unwrap();
        socket.listen(8).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        (socket, addr)
    }

    #[test]
    fn the_probe_refuses_a_port_another_socket_listens_on_and_frees_it_after() {
        let (held, addr) = listening_with_reuse_port();
        let refused = probe_port_is_free(addr).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse);
        drop(held);
        probe_port_is_free(addr).expect("a port nobody listens on is free");
        // The probe never listened: nothing accepts on the port after it.
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
