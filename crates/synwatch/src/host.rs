//! This host's interfaces and addresses, read with getifaddrs(3).

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context, Result};
use ipnet::IpNet;
use nix::net::if_::InterfaceFlags;
use synwatch_detect::AddrSet;

/// One read of the host's interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// Every address of every interface (loopback included: traffic to 127.0.0.1 is
    /// local too).
    pub addresses: BTreeSet<IpAddr>,
    /// Interfaces that are up, loopback excepted: the default capture set.
    pub up: BTreeSet<String>,
    /// Every interface name.
    pub all: BTreeSet<String>,
}

impl Host {
    pub fn read() -> Result<Self> {
        let mut host = Host::default();
        for ifa in nix::ifaddrs::getifaddrs().context("cannot list network interfaces")? {
            host.all.insert(ifa.interface_name.clone());
            if ifa.flags.contains(InterfaceFlags::IFF_UP)
                && !ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            {
                host.up.insert(ifa.interface_name.clone());
            }
            let Some(addr) = ifa.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                host.addresses.insert(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                host.addresses.insert(IpAddr::V6(v6.ip()));
            }
        }
        Ok(host)
    }

    /// The local address set: these addresses plus the configured ones.
    pub fn locals(&self, configured: &AddrSet) -> AddrSet {
        let mut set = configured.clone();
        for addr in &self.addresses {
            set.insert(IpNet::from(*addr));
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_address_is_local_and_loopback_is_not_a_default_interface() {
        let host = Host::read().expect("getifaddrs");
        assert!(
            host.addresses.contains(&IpAddr::from([127, 0, 0, 1])),
            "{host:?}"
        );
        assert!(host.all.contains("lo"));
        assert!(!host.up.contains("lo"));
        let locals = host.locals(&AddrSet::new());
        assert!(locals.contains(IpAddr::from([127, 0, 0, 1])));
    }
}
