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
