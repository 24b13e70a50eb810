//! One agent per firewall: synwatch's rules (`inet synwatch`, the SYNWATCH chain and its
//! ipsets, the XDP program) exist once per network namespace, whatever the state
//! directory or the user, so a second agent that set them up would take them from the
//! first. Before touching any of them the agent claims the namespace by binding an
//! abstract unix socket, `@synwatch-agent`: abstract names live in the network
//! namespace, so the claim is exactly as wide as the rules; binding is atomic, so two
//! agents starting together cannot both win; and the kernel releases it when its holder
//! dies, even by `kill -9`, so no stale lock is ever left to clean up. A second agent
//! is told who holds it (the peer's credentials) and refuses to start (exit 2).

use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::thread;

/// The abstract name (without the leading NUL) that marks the owner.
pub const CLAIM_NAME: &str = "synwatch-agent";

/// Who holds the claim, as far as can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub command: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.command, self.pid) {
            (Some(c), Some(p)) => write!(f, "{c} (pid {p}")?,
            (None, Some(p)) => write!(f, "a process (pid {p}")?,
            _ => return write!(f, "another process"),
        }
        match self.uid {
            Some(0) => write!(f, ", root)"),
            Some(u) => write!(f, ", uid {u})"),
            None => write!(f, ")"),
        }
    }
}

/// Claims synwatch's firewall in this network namespace for the life of the process.
/// `Err` carries the holder when another process has it.
pub fn claim() -> Result<(), ClaimError> {
    claim_name(CLAIM_NAME)
}

#[derive(Debug)]
pub enum ClaimError {
    Held(Holder),
    Io(io::Error),
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Held(holder) => write!(
                f,
                "another synwatch agent already runs in this network namespace: {holder} holds @{CLAIM_NAME} and with it synwatch's firewall rules; stop it first (systemctl stop synwatch), or run this one with --block none to detect and report only"
            ),
            ClaimError::Io(e) => write!(
                f,
                "cannot claim synwatch's firewall rules (abstract socket @{CLAIM_NAME}): {e}"
            ),
        }
    }
}

/// Who holds the claim in this network namespace, if an agent does.
pub fn holder_if_any() -> Option<Holder> {
    holder_of(CLAIM_NAME)
}

fn holder_of(name: &str) -> Option<Holder> {
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
    UnixStream::connect_addr(&addr).ok()?;
    Some(holder(&addr))
}

fn claim_name(name: &str) -> Result<(), ClaimError> {
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(ClaimError::Io)?;
    match UnixListener::bind_addr(&addr) {
        Ok(listener) => {
            // Accepts (and closes) whatever connects, so that the claim's backlog never
            // fills and a later agent asking who holds it never waits.
            thread::Builder::new()
                .name("owner".into())
                .spawn(move || {
                    // Started before the agent drops its privileges (capabilities are
                    // per thread): it needs none.
                    crate::privileges::drop_all_in_this_thread();
                    for stream in listener.incoming() {
                        drop(stream);
                    }
                })
                .map_err(ClaimError::Io)?;
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(ClaimError::Held(holder(&addr))),
        Err(e) => Err(ClaimError::Io(e)),
    }
}

/// The claim's holder, from the credentials the kernel recorded when it listened.
fn holder(addr: &SocketAddr) -> Holder {
    let unknown = Holder {
        pid: None,
        uid: None,
        command: None,
    };
    let Ok(stream) = UnixStream::connect_addr(addr) else {
        return unknown;
    };
    let Ok(cred) =
        nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
    else {
        return unknown;
    };
    // A holder in another PID namespace shows as pid 0.
    let pid = Some(cred.pid()).filter(|&p| p > 0);
    Holder {
        pid,
        uid: Some(cred.uid()),
        command: pid.and_then(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .ok()
                .map(|c| c.trim().to_owned())
        }),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    #[test]
    fn the_second_claim_is_refused_and_names_the_first() {
        // A name of this test's own, so that an agent running on this host does not
        // interfere.
        let name = format!("synwatch-test-{}", std::process::id());
        claim_name(&name).unwrap();
        assert!(holder_of(&format!("{name}-none")).is_none());
        assert!(holder_of(&name).is_some());
        let Err(ClaimError::Held(holder)) = claim_name(&name) else {
            panic!("a second claim succeeded");
        };
        assert_eq!(holder.pid, Some(i32::try_from(std::process::id()).unwrap()));
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(
            holder.uid,
            Some(std::fs::metadata("/proc/self").unwrap().uid())
        );
        let text = ClaimError::Held(holder).to_string();
        assert!(
            text.contains("another synwatch agent already runs"),
            "{text}"
        );
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        // Asking who holds it many times never waits (the backlog is drained).
        for _ in 0..300 {
            assert!(matches!(claim_name(&name), Err(ClaimError::Held(_))));
        }
    }
}
