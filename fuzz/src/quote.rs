//! What the verifier parses from an appliance's attestation before any signature is checked (TCG TPM 2.0
//! Part 2 §10.12.12 TPMS_ATTEST, §11.3.4 TPMT_SIGNATURE, §12.2.4 TPMT_PUBLIC; docs/ARCHITECTURE.md §4): the
//! quote, its signature and the AK's and EK's public areas, each from its own slice of the input.

use client::verify::checks;
use tpm::attest::EcdsaSignature;
use tpm::public::PublicArea;

/// Splits the input at the offsets its first two bytes give and parses the three parts.
pub fn quote(data: &[u8]) {
    let [first, second, rest @ ..] = data else {
        return;
    };
    let one = usize::from(*first).min(rest.len());
    let (attest, rest) = rest.split_at(one);
    let two = usize::from(*second).min(rest.len());
    let (signature, public) = rest.split_at(two);
    if let Ok(info) = checks::parse_quote(attest) {
        // A parsed quote's selection names PCRs that exist.
        assert!(info
            .selection
            .indices()
            .all(|pcr| usize::from(pcr) < tpm::commands::PCR_COUNT));
    }
    let _ = EcdsaSignature::parse(signature);
    // The whole input as a signature too: its first bytes are the most mutated.
    let _ = EcdsaSignature::parse(data);
    for bytes in [public, data] {
        if let Ok(area) = PublicArea::from_bytes(bytes) {
            let _ = area.info();
            let _ = area.name();
        }
    }
}
