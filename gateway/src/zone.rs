//! Which zone a client is in, seen from its address: the host itself (`loopback`), the site's
//! own networks (`site`: private, unique-local, link-local and carrier-grade NAT ranges), or
//! anywhere else (`other`). The node counts pulls per zone, so an operator sees how much of
//! the gateway's traffic comes from outside the host and the site.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Zone {
    Loopback,
    Site,
    Other,
}

impl Zone {
    pub fn of(ip: IpAddr) -> Zone {
        match ip.to_canonical() {
            ip if ip.is_loopback() => Zone::Loopback,
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                // 100.64.0.0/10: carrier-grade NAT (RFC 6598), the addresses of many sites'
                // own overlay networks.
                if v4.is_private() || v4.is_link_local() || (a == 100 && (b & 0xc0) == 64) {
                    Zone::Site
                } else {
                    Zone::Other
                }
            }
            IpAddr::V6(v6) => {
                let first = v6.segments()[0];
                // fc00::/7 unique local, fe80::/10 link-local.
                if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
                    Zone::Site
                } else {
                    Zone::Other
                }
            }
        }
    }

    pub const ALL: [Zone; 3] = [Zone::Loopback, Zone::Site, Zone::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Zone::Loopback => "loopback",
            Zone::Site => "site",
            Zone::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_fall_in_their_zones() {
        for (address, zone) in [
            ("127.0.0.1", Zone::Loopback),
            ("::1", Zone::Loopback),
            ("::ffff:127.0.0.1", Zone::Loopback),
            ("10.1.2.3", Zone::Site),
            ("172.16.0.1", Zone::Site),
            ("192.168.1.1", Zone::Site),
            ("169.254.0.1", Zone::Site),
            ("100.64.0.1", Zone::Site),
            ("100.127.255.255", Zone::Site),
            ("::ffff:10.0.0.1", Zone::Site),
            ("fd00::1", Zone::Site),
            ("fe80::1", Zone::Site),
            ("100.128.0.1", Zone::Other),
            ("8.8.8.8", Zone::Other),
            ("172.32.0.1", Zone::Other),
            ("2001:db8::1", Zone::Other),
        ] {
            assert_eq!(Zone::of(address.parse().unwrap()), zone, "{address}");
        }
    }
}
