//! X25519 key exchange for TLS 1.3 key shares (RFC 7748 §5, §6.1; RFC 8446 §4.2.8.2, §7.4.2).
//!
//! Each handshake draws a fresh 32-byte scalar from the caller's random source; curve25519-dalek clamps
//! it (RFC 7748 §5 decodeScalar25519). A shared secret of all zeros means the peer sent a small-order
//! point and is refused (RFC 8446 §7.4.2, RFC 7748 §6.1).

use alloc::boxed::Box;

use curve25519_dalek::montgomery::MontgomeryPoint;
use rustls::crypto::{ActiveKeyExchange, SecureRandom, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup, PeerMisbehaved};
use zeroize::Zeroizing;

/// Bytes of an X25519 scalar, public key and shared secret.
const KEY_LEN: usize = 32;

/// The X25519 group, drawing private keys from `random`.
#[derive(Debug)]
pub(crate) struct X25519 {
    pub(crate) random: &'static dyn SecureRandom,
}

impl SupportedKxGroup for X25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        self.random
            .fill(&mut secret[..])
            .map_err(|_| Error::FailedToGetRandomBytes)?;
        let public = MontgomeryPoint::mul_base_clamped(*secret).to_bytes();
        Ok(Box::new(X25519Exchange { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// Our half of one exchange: the scalar (wiped on drop) and its public key.
struct X25519Exchange {
    secret: Zeroizing<[u8; KEY_LEN]>,
    public: [u8; KEY_LEN],
}

impl ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        let peer = <[u8; KEY_LEN]>::try_from(peer_pub_key)
            .map_err(|_| Error::from(PeerMisbehaved::InvalidKeyShare))?;
        // RFC 7748 §5: the u-coordinate's top bit is ignored; dalek's field decoding does that.
        let shared = Zeroizing::new(MontgomeryPoint(peer).mul_clamped(*self.secret).to_bytes());
        if shared.iter().all(|&byte| byte == 0) {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::provider::RandomFn;

    static COUNTING: RandomFn = RandomFn(|buf| {
        for (index, byte) in buf.iter_mut().enumerate() {
            *byte = (index as u8).wrapping_mul(31).wrapping_add(7);
        }
        true
    });

    /// RFC 7748 §6.1: Alice's and Bob's key pairs and their shared secret.
    #[test]
    fn rfc7748_diffie_hellman_vector() {
        let alice_secret: [u8; 32] =
            hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let bob_public: [u8; 32] =
            hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let exchange = Box::new(X25519Exchange {
            secret: Zeroizing::new(alice_secret),
            public: MontgomeryPoint::mul_base_clamped(alice_secret).to_bytes(),
        });
        assert_eq!(
            exchange.pub_key(),
            hex::<32>("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        let shared = exchange.complete(&bob_public).unwrap();
        assert_eq!(
            shared.secret_bytes(),
            hex::<32>("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        );
    }

    /// Small-order peer points give an all-zero secret and are refused (RFC 8446 §7.4.2).
    #[test]
    fn small_order_points_are_refused() {
        let group = X25519 { random: &COUNTING };
        for point in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            let exchange = group.start().unwrap();
            assert!(exchange.complete(&point).is_err());
        }
        let exchange = group.start().unwrap();
        assert!(exchange.complete(&[9u8; 31]).is_err(), "wrong length");
    }

    fn hex<const N: usize>(text: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (index, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).unwrap();
        }
        out
    }
}
