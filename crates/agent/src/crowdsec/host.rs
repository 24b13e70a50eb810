//! The CrowdSec Local API server's addresses, protected like the host's gateways (SPEC
//! §2, "Never cut the host off"): four SYNs forged "from" the LAPI must not cut the agent
//! off its fleet.
//!
//! The URL's host is an IP literal (taken as is) or a name, resolved at start and again
//! every [`RESOLVE_EVERY`] on a thread of its own, so that a resolver that stalls never
//! stalls the agent's loop. The addresses a name had stay protected while it cannot be
//! resolved; new ones join them, and one the name no longer resolves to leaves after
//! [`KEPT_UNSEEN`] answers without it (a load balancer's rotation, a DNS answer someone
//! forged once), so that the addresses never banned for the LAPI's sake are the LAPI's,
//! not every address its name ever had.

use std::collections::BTreeSet;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often a LAPI given by name is resolved again (the host view's own pace).
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);

/// Successful answers without an address after which it is no longer the LAPI's: 360, an
/// hour at [`RESOLVE_EVERY`]. Long, because an answer may leave out an address that is
/// still the LAPI's (a round robin answering with part of its addresses, AAAA queries
/// timing out while A ones answer, a resolver that answers wrongly for a while), and the
/// agent's kept-alive connection may still go to it.
pub const KEPT_UNSEEN: u32 = 360;

/// Each address the LAPI's name resolved to, with how many answers since left it out.
type Held = std::collections::BTreeMap<IpAddr, u32>;

/// Where the LAPI is, from its base URL (`http://HOST:PORT` or `https://[V6]:PORT`, with
/// an optional path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Address(IpAddr),
    /// A name, with the port to resolve it for.
    Name(String, u16),
}

/// The host of `url` (as [`super::lapi::base_url`] accepts it); `None` when it names none.
pub fn place(url: &str) -> Option<Place> {
    let url = url.trim();
    let (rest, default_port) = if let Some(r) = url.strip_prefix("http://") {
        (r, 80)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else {
        return None;
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    // Credentials before an `@` are not the host.
    let authority = authority.rsplit('@').next()?;
    let Authority { host, port, .. } = Authority::of(authority)?;
    let bare = host.split('%').next().unwrap_or(host);
    if let Ok(addr) = bare.parse::<IpAddr>() {
        return Some(Place::Address(addr.to_canonical()));
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    Some(Place::Name(host.trim_end_matches('.').to_owned(), port))
}

/// A URL's `HOST[:PORT]` or `[V6][:PORT]`, as written.
#[derive(Debug, Clone, Copy)]
pub struct Authority<'a> {
    /// The host; for a bracketed one, what is inside the brackets, a zone index
    /// (`fe80::1%25eth0`) included.
    pub host: &'a str,
    pub port: Option<&'a str>,
    pub bracketed: bool,
}

impl<'a> Authority<'a> {
    /// `None` when there is no host, or a bracket is not closed or is followed by
    /// something else than a port.
    pub fn of(authority: &'a str) -> Option<Self> {
        let (host, port, bracketed) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (addr, after) = v6.split_once(']')?;
                let port = match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':')?),
                };
                (addr, port, true)
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p), false),
                None => (authority, None, false),
            },
        };
        (!host.is_empty()).then_some(Self {
            host,
            port,
            bracketed,
        })
    }
}

/// The LAPI's addresses as last known, shared between the resolving thread and the host
/// views that read them (cheap to clone).
#[derive(Debug, Clone)]
pub struct LapiAddrs {
    place: Place,
    addrs: Arc<Mutex<Held>>,
}

impl LapiAddrs {
    /// The addresses of the LAPI at `url`: an address at once; a name resolved now (a
    /// failure is said, and the name is tried again later) and then every
    /// [`RESOLVE_EVERY`] for as long as a clone of the result is alive.
    pub fn start(url: &str) -> Option<Self> {
        let place = place(url)?;
        let this = Self {
            addrs: Arc::default(),
            place: place.clone(),
        };
        match &place {
            Place::Address(a) => {
                this.lock().insert(*a, 0);
            }
            Place::Name(name, port) => {
                if let Err(e) = this.resolve() {
                    tracing::warn!(
                        "warning: cannot resolve the CrowdSec LAPI's host {name}: {e}; it is protected (never blocked) once it resolves"
                    );
                }
                let weak = Arc::downgrade(&this.addrs);
                let (name, port) = (name.clone(), *port);
                let spawned = std::thread::Builder::new()
                    .name("lapi-resolve".into())
                    .spawn(move || keep_resolving(&weak, &name, port));
                if let Err(e) = spawned {
                    tracing::warn!(
                        "warning: cannot start the thread that resolves the CrowdSec LAPI's host again: {e}"
                    );
                }
            }
        }
        Some(this)
    }

    /// The addresses known now.
    pub fn get(&self) -> BTreeSet<IpAddr> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.addrs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolves a name once, adding what it resolves to.
    fn resolve(&self) -> std::io::Result<()> {
        match &self.place {
            Place::Address(_) => Ok(()),
            Place::Name(name, port) => {
                let found = resolve(name, *port)?;
                merge(&self.addrs, found);
                Ok(())
            }
        }
    }
}

fn resolve(name: &str, port: u16) -> std::io::Result<BTreeSet<IpAddr>> {
    Ok((name, port)
        .to_socket_addrs()?
        .map(|s| s.ip().to_canonical())
        .collect())
}

/// Takes one answer: `found` is held (logging the addresses that are new), and an
/// address left out of [`KEPT_UNSEEN`] answers in a row is let go (logged).
fn merge(addrs: &Mutex<Held>, found: BTreeSet<IpAddr>) {
    let mut held = addrs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let new: Vec<String> = found
        .iter()
        .filter(|a| !held.contains_key(a))
        .map(ToString::to_string)
        .collect();
    if !held.is_empty() && !new.is_empty() {
        tracing::info!(
            "the CrowdSec LAPI's host resolves to new addresses (never blocked): {}",
            new.join(", ")
        );
    }
    let mut gone = Vec::new();
    held.retain(|addr, unseen| {
        *unseen = if found.contains(addr) { 0 } else { *unseen + 1 };
        let keep = *unseen < KEPT_UNSEEN;
        if !keep {
            gone.push(addr.to_string());
        }
        keep
    });
    if !gone.is_empty() {
        tracing::info!(
            "the CrowdSec LAPI's host no longer resolves to {} ({KEPT_UNSEEN} answers without them): no longer protected for its sake",
            gone.join(", ")
        );
    }
    for addr in found {
        held.entry(addr).or_insert(0);
    }
}

/// Resolves `name` again every RESOLVE_EVERY until the addresses are no longer wanted.
fn keep_resolving(addrs: &Weak<Mutex<Held>>, name: &str, port: u16) {
    loop {
        std::thread::sleep(RESOLVE_EVERY);
        let Some(held) = addrs.upgrade() else {
            return;
        };
        if let Ok(found) = resolve(name, port) {
            merge(&held, found);
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_lapi_host_is_the_urls_address_or_name() {
        let addr = |a: &str| Some(Place::Address(ip(a)));
        assert_eq!(place("http://10.71.9.9:8080/"), addr("10.71.9.9"));
        assert_eq!(place("http://10.71.9.9"), addr("10.71.9.9"));
        assert_eq!(place("https://[2001:db8::9]:8080/x"), addr("2001:db8::9"));
        assert_eq!(place("http://[fe80::9%25eth0]:8080"), addr("fe80::9"));
        assert_eq!(place("http://[::ffff:10.0.0.9]"), addr("10.0.0.9"));
        assert_eq!(place("http://u:p@192.0.2.9:8080"), addr("192.0.2.9"));
        assert_eq!(
            place("https://lapi.example.org./v1"),
            Some(Place::Name("lapi.example.org".into(), 443))
        );
        assert_eq!(
            place("http://localhost:8080"),
            Some(Place::Name("localhost".into(), 8080))
        );
        assert_eq!(place("http://"), None);
        assert_eq!(place("lapi:8080"), None);
        assert_eq!(place("http://[2001:db8::9"), None);
    }

    /// An address the name no longer resolves to leaves after KEPT_UNSEEN answers
    /// without it; one seen again meanwhile starts over; a failed resolution (no
    /// answer) keeps everything.
    #[test]
    fn an_address_the_name_stopped_resolving_to_is_let_go() {
        let held = Mutex::new(Held::new());
        let set = |addrs: &[&str]| addrs.iter().map(|a| ip(a)).collect::<BTreeSet<_>>();
        let now = |held: &Mutex<Held>| held.lock().unwrap().keys().copied().collect::<Vec<_>>();
        merge(&held, set(&["192.0.2.1", "192.0.2.2"]));
        // A forged answer, once.
        merge(&held, set(&["192.0.2.1", "203.0.113.66"]));
        assert_eq!(
            now(&held),
            [ip("192.0.2.1"), ip("192.0.2.2"), ip("203.0.113.66")]
        );
        for i in 0..KEPT_UNSEEN {
            // The round robin answers with one of its two addresses at a time.
            let one = if i % 2 == 0 { "192.0.2.1" } else { "192.0.2.2" };
            merge(&held, set(&[one]));
        }
        assert_eq!(
            now(&held),
            [ip("192.0.2.1"), ip("192.0.2.2")],
            "the forged one went"
        );
        for _ in 0..KEPT_UNSEEN {
            merge(&held, set(&["192.0.2.9"]));
        }
        assert_eq!(now(&held), [ip("192.0.2.9")], "the LAPI moved");
    }

    #[test]
    fn an_address_is_protected_at_once_and_a_name_once_resolved() {
        let lapi = LapiAddrs::start("http://10.71.9.9:8080/").unwrap();
        assert_eq!(lapi.get(), [ip("10.71.9.9")].into_iter().collect());
        // localhost resolves through /etc/hosts, without a resolver.
        let lapi = LapiAddrs::start("http://localhost:8080").unwrap();
        assert!(lapi.get().contains(&ip("127.0.0.1")), "{:?}", lapi.get());
    }
}
