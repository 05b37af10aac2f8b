//! `TCP_NODELAY` on the hub's PostgreSQL connections.
//!
//! sqlx 0.9.0 connects without `TCP_NODELAY` (a regression of that release; its fix is not
//! released yet). With TLS, which PostgreSQL negotiates by default (`sslmode=prefer`), one
//! protocol message leaves as several small TLS records, one `sendto` each: Nagle's algorithm
//! holds the second until the first is acknowledged, and the server, waiting for the rest of
//! the message, delays that acknowledgement by 40 ms. Measured on the journal: a commit every
//! ~50 ms per connection and `POST /run` at 768 executions/s with one writer instead of
//! 5,678/s over the Unix socket (docs/performance.md, "Hub: POST /run").
//!
//! sqlx gives no access to its sockets, so after each new connection this walks the
//! process's descriptors and sets `TCP_NODELAY` on every TCP socket whose peer port is the
//! database's. Each descriptor is first duplicated with `pidfd_getfd` (an owned copy: no
//! `unsafe`, and the check and the change apply to the same socket even if the original
//! number is closed and reused meanwhile). The option belongs to the socket, so setting it
//! on the copy sets it for sqlx's descriptor. Other sockets to that port in this process are
//! PostgreSQL connections too, for which the option is as right. Where `pidfd_getfd` is not
//! available (Linux < 5.6, a seccomp filter) nothing changes and the hub runs as before.

use std::net::SocketAddr;

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

/// Sets `TCP_NODELAY` on this process's TCP sockets connected to `port`. Returns how many
/// were changed; errors are reported once at debug level and otherwise ignored.
pub fn set_on_connections_to(port: u16) -> usize {
    match try_set(port) {
        Ok(changed) => changed,
        Err(error) => {
            tracing::debug!(%error, "could not set TCP_NODELAY on the database connections");
            0
        }
    }
}

fn try_set(port: u16) -> std::io::Result<usize> {
    let me = pidfd_open(getpid(), PidfdFlags::empty())?;
    let mut changed = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(number) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // Closed since the listing, or not ours to copy: skip.
        let Ok(copy) = pidfd_getfd(&me, number, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let peer = rustix::net::getpeername(&copy)
            .ok()
            .flatten()
            .and_then(|addr| SocketAddr::try_from(addr).ok());
        if peer.is_none_or(|peer| peer.port() != port) {
            continue;
        }
        if rustix::net::sockopt::tcp_nodelay(&copy) == Ok(false)
            && rustix::net::sockopt::set_tcp_nodelay(&copy, true).is_ok()
        {
            changed += 1;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nodelay_on_sockets_to_the_port_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to_db = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let to_other = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!to_db.nodelay().unwrap());
        let changed = set_on_connections_to(listener.local_addr().unwrap().port());
        assert!(changed >= 1, "changed {changed}");
        assert!(to_db.nodelay().unwrap());
        assert!(!to_other.nodelay().unwrap());
        // Idempotent: a second pass finds nothing left to change on that socket.
        set_on_connections_to(listener.local_addr().unwrap().port());
        assert!(to_db.nodelay().unwrap());
    }
}
