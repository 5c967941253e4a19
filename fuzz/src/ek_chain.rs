//! The EK certificate chain check (client::verify::certificate; RFC 5280 §6.1 as an EK chain needs it): the
//! input is the EK certificate an appliance presents, checked against a fixed bundle (the swtpm local CA's
//! root and signing certificates that issued `fixtures/ek-certificate.der`, the seed) at a fixed time.

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use client::verify::TrustAnchors;

/// 2027-01-15, inside the fixture certificates' validity.
const NOW_SECONDS: u64 = 1_800_000_000;

fn anchors() -> &'static TrustAnchors {
    static ANCHORS: OnceLock<TrustAnchors> = OnceLock::new();
    ANCHORS.get_or_init(|| {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        TrustAnchors::from_pem_bundle(&[
            &fixtures.join("ek-root.pem"),
            &fixtures.join("ek-issuer.pem"),
        ])
        .expect("the fixture CA bundle")
    })
}

/// Checks the input as an EK certificate; one that passes must certify an RSA key.
pub fn ek_chain(data: &[u8]) {
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECONDS);
    if let Ok(summary) = anchors().verify(data, now) {
        assert!(!summary.modulus.is_empty() && summary.exponent != 0);
        assert!(!summary.chain.is_empty());
    }
}
