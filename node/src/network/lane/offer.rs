//! What a serving node tells a peer that asks for a lane: where to connect, the token that
//! names the connection, and the two keys of its records. Sent only on a libp2p stream, which
//! Noise (and the pre-shared key) keep secret.

use super::record::{KEY_BYTES, LaneKeys};

/// Bytes of a token: guessing one is hopeless.
pub const TOKEN_BYTES: usize = 32;
/// The version of the offer's layout, its first byte.
const VERSION: u8 = 1;
/// version, port, token, two keys.
pub const OFFER_BYTES: usize = 1 + 2 + TOKEN_BYTES + 2 * KEY_BYTES;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub port: u16,
    pub token: [u8; TOKEN_BYTES],
    pub keys: LaneKeys,
}

impl Offer {
    /// An offer of `port` with a fresh token and fresh keys, from the operating system's
    /// random number generator. Not aws-lc's: its first use in a process gathers CPU jitter
    /// for its entropy pool, about 30 ms of CPU that each node paid on its first offer, and
    /// the offer waited for (docs/benchmarks.md).
    pub fn new(port: u16) -> Offer {
        let mut token = [0u8; TOKEN_BYTES];
        let mut asker_to_server = [0u8; KEY_BYTES];
        let mut server_to_asker = [0u8; KEY_BYTES];
        for bytes in [
            &mut token[..],
            &mut asker_to_server[..],
            &mut server_to_asker[..],
        ] {
            getrandom::fill(bytes).expect("the system's random number generator works");
        }
        Offer {
            port,
            token,
            keys: LaneKeys {
                asker_to_server,
                server_to_asker,
            },
        }
    }

    pub fn encode(&self) -> [u8; OFFER_BYTES] {
        let mut encoded = [0u8; OFFER_BYTES];
        encoded[0] = VERSION;
        encoded[1..3].copy_from_slice(&self.port.to_be_bytes());
        let (token, keys) = encoded[3..].split_at_mut(TOKEN_BYTES);
        token.copy_from_slice(&self.token);
        let (asker_to_server, server_to_asker) = keys.split_at_mut(KEY_BYTES);
        asker_to_server.copy_from_slice(&self.keys.asker_to_server);
        server_to_asker.copy_from_slice(&self.keys.server_to_asker);
        encoded
    }

    pub fn decode(encoded: &[u8; OFFER_BYTES]) -> Result<Offer, &'static str> {
        if encoded[0] != VERSION {
            return Err("an offer of an unknown version");
        }
        let port = u16::from_be_bytes([encoded[1], encoded[2]]);
        if port == 0 {
            return Err("an offer of port 0");
        }
        let (token, keys) = encoded[3..].split_at(TOKEN_BYTES);
        let (asker_to_server, server_to_asker) = keys.split_at(KEY_BYTES);
        Ok(Offer {
            port,
            token: token.try_into().expect("TOKEN_BYTES"),
            keys: LaneKeys {
                asker_to_server: asker_to_server.try_into().expect("KEY_BYTES"),
                server_to_asker: server_to_asker.try_into().expect("KEY_BYTES"),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_read_back_and_are_fresh_each_time() {
        let offer = Offer::new(4051);
        assert_eq!(Offer::decode(&offer.encode()).unwrap(), offer);
        let other = Offer::new(4051);
        assert_ne!(other.token, offer.token);
        assert_ne!(other.keys.asker_to_server, offer.keys.asker_to_server);
        assert_ne!(offer.keys.asker_to_server, offer.keys.server_to_asker);
    }

    #[test]
    fn offers_of_another_version_or_port_zero_are_refused() {
        let mut encoded = Offer::new(4051).encode();
        encoded[0] = 2;
        assert!(Offer::decode(&encoded).is_err());
        let encoded = Offer::new(0).encode();
        assert!(Offer::decode(&encoded).is_err());
    }
}
