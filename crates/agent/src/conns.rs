//! Serving clients that one client cannot hold: `/metrics`, `/healthz` and the control
//! socket each serve every connection on a thread of its own, up to a cap (more are
//! closed at once, so a flood of idle connections costs a few threads, not the
//! agent), and each request must arrive whole within a deadline, whatever the pace of
//! its bytes: a client that sends a byte every second and a half, or nothing at all,
//! holds one thread until its deadline and delays nobody else.
//!
//! Why threads rather than one poll loop: a request is tiny and short-lived, the
//! control socket's answer waits on the pipeline (which a poll loop could not do without
//! a state machine of its own), and a capped number of threads bounds memory just as
//! well (each is a few pages of stack in use).

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::clock::monotonic;

/// Accepts connections on `listener` (set non-blocking here) and hands each to `serve`,
/// until `stop` is set: the thread that runs this ends within 200 ms of it.
pub fn accept_until<L: AsFd, S>(
    listener: &L,
    accept: impl Fn(&L) -> io::Result<S>,
    stop: &AtomicBool,
    mut serve: impl FnMut(S),
) {
    while !stop.load(Ordering::Relaxed) {
        match accept(listener) {
            Ok(stream) => serve(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Wait for the next connection (or, every 200 ms, look at `stop`).
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(200u8));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A stream whose reads can be given a timeout.
pub trait Timeouts {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Timeouts for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
}

impl Timeouts for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
}

/// How many connections a server handles at once, and what it refused.
#[derive(Debug, Clone)]
pub struct Limit {
    name: &'static str,
    cap: usize,
    active: Arc<AtomicUsize>,
    refused: Arc<AtomicU64>,
}

/// Counts one connection being served until dropped.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limit {
    pub fn new(name: &'static str, cap: usize) -> Self {
        Self {
            name,
            cap,
            active: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// Connections closed at once because `cap` were being served.
    #[cfg(test)]
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Serves `stream` with `handle` on a thread of its own, unless the cap is reached
    /// (then the connection is closed unanswered). Whether it is served.
    pub fn spawn<S: Send + 'static>(
        &self,
        stream: S,
        handle: impl FnOnce(S) + Send + 'static,
    ) -> bool {
        if self.active.fetch_add(1, Ordering::Relaxed) >= self.cap {
            self.active.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let slot = Slot(Arc::clone(&self.active));
        thread::Builder::new()
            .name(self.name.into())
            .spawn(move || {
                let _slot = slot;
                handle(stream);
            })
            .is_ok()
    }
}

/// The moment a whole request must have arrived (and its answer left) by.
pub fn deadline(within: Duration) -> Instant {
    monotonic() + within
}

/// Time left until `deadline`, or a timeout error once it has passed.
pub fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(monotonic());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the request did not arrive in time",
        ));
    }
    Ok(left)
}

/// Reads into `buf` until `done` says the request is whole, the peer stops sending,
/// `max` bytes have come, or `deadline` passes (an error): however the bytes are paced,
/// reading ends by the deadline.
pub fn read_request<S: Read + Timeouts>(
    stream: &mut S,
    deadline: Instant,
    max: usize,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) -> io::Result<()> {
    let mut chunk = [0u8; 1024];
    while buf.len() < max && !done(buf) {
        stream.set_read_timeout(Some(left(deadline)?))?;
        let want = chunk.len().min(max - buf.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A read timeout (EAGAIN): the deadline, checked at the top of the loop.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_request_paced_a_byte_at_a_time_is_cut_at_the_deadline() {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        let sender = thread::spawn(move || {
            for _ in 0..20 {
                if client.write_all(b"x").is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        let started = monotonic();
        let mut buf = Vec::new();
        let err = read_request(
            &mut server,
            deadline(Duration::from_millis(350)),
            4096,
            &mut buf,
            |b| b.ends_with(b"\n"),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(monotonic() - started < Duration::from_millis(900));
        assert!(!buf.is_empty() && buf.len() < 20, "{buf:?}");
        drop(server);
        sender.join().unwrap();
    }

    #[test]
    fn connections_beyond_the_cap_are_refused_and_slots_come_back() {
        let limit = Limit::new("test", 2);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(std::sync::Mutex::new(wait));
        for _ in 0..2 {
            let wait = Arc::clone(&wait);
            assert!(limit.spawn((), move |()| {
                let _ = wait.lock().unwrap().recv();
            }));
        }
        assert!(!limit.spawn((), |()| {}));
        assert_eq!(limit.refused(), 1);
        release.send(()).unwrap();
        release.send(()).unwrap();
        while limit.active.load(Ordering::Relaxed) > 0 {
            thread::yield_now();
        }
        assert!(limit.spawn((), |()| {}));
    }
}
