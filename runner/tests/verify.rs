//! The verifier against REAL evidence: each test boots a simulated appliance on a swtpm it starts itself
//! (`support/sim_appliance.rs`: provisioned with a CA of the runner's kind), which does exactly what the kernel does
//! (docs/ARCHITECTURE.md §4: firmware-like extends of PCRs 0-7, then PCR 12 kernel segments, 13 model, 14 command line, each
//! logged; EK and AK as primaries of the endorsement hierarchy; the EK certificate from NV; TPM2_Quote with
//! `qualifying_data(nonce)`), then tampers exactly one thing and asserts the check that names it.
//!
//! These tests fail, not skip, when swtpm or tpm2-tools is missing; the message names the Debian package.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use client::manifest::{Manifest, Sha256Digest};
use client::verify::{
    self, checks, verify_evidence, CertificateError, ClockCounters, CredentialChallenge,
    Expectation, Field, ManifestItem, TrustAnchors, VerifyError, VerifyOptions,
};
use client::verify_appliance;
use net::proto::{ErrorCode, Evidence, Request, Response};
use p256::ecdsa::signature::Signer as _;
use rand::SeedableRng as _;
use tpm::eventlog::{EventKind, EventLog};

#[path = "support/sim_appliance.rs"]
mod sim_appliance;
use sim_appliance::{foreign, home, SimAppliance, TestImage, BINDING};

// ---------------------------------------------------------------------------------------------------------
// Shared fixtures and helpers.

const NONCE: [u8; 32] = [0x4e; 32];

/// Honest evidence from the home TPM for NONCE over the standard manifest's selection, made once.
fn honest() -> &'static Evidence {
    static HONEST: OnceLock<Evidence> = OnceLock::new();
    HONEST.get_or_init(|| {
        let image = TestImage::standard();
        let mut appliance = SimAppliance::boot(home(), &image, true);
        appliance.attest(&NONCE, image.manifest().pcr_mask())
    })
}

fn standard_manifest() -> &'static Manifest {
    static MANIFEST: OnceLock<Manifest> = OnceLock::new();
    MANIFEST.get_or_init(|| TestImage::standard().manifest())
}

fn home_trust() -> &'static TrustAnchors {
    static TRUST: OnceLock<TrustAnchors> = OnceLock::new();
    TRUST.get_or_init(|| home().trust())
}

fn expectation<'a>(manifest: &'a Manifest, trust: &'a TrustAnchors) -> Expectation<'a> {
    Expectation {
        nonce: NONCE,
        binding: BINDING,
        manifest,
        trust,
        now: SystemTime::now(),
        previous_clock: None,
        // The simulated appliance boots directly: its manifests need the host trusted.
        trust_host: true,
        allow_debug_image: false,
    }
}

/// Verifies `evidence` for NONCE against the standard manifest and the home CA.
fn check(evidence: &Evidence) -> Result<verify::CheckedEvidence, VerifyError> {
    verify_evidence(evidence, &expectation(standard_manifest(), home_trust()))
}

/// One change to evidence.
type Tamper = fn(&mut Evidence);

fn tampered(change: impl FnOnce(&mut Evidence)) -> Evidence {
    let mut evidence = honest().clone();
    change(&mut evidence);
    evidence
}

// Offsets into the honest TPMS_ATTEST (qualifiedSigner and extraData are 34 and 32 bytes): Part 2 §10.12.12.
const QUALIFIED_SIGNER: usize = 8;
const EXTRA_DATA: usize = 44;
const CLOCK: usize = 76;
const RESET_COUNT: usize = 84;
const SAFE: usize = 92;
const BANK_HASH: usize = 105;
const PCR_DIGEST: usize = 113;
const ATTEST_LEN: usize = 145;

/// A software P-256 key standing in for an AK, so tampered attest bytes can carry a valid signature: shows
/// that the checks after the signature stand on their own.
fn software_ak() -> (p256::ecdsa::SigningKey, Vec<u8>) {
    let key = p256::ecdsa::SigningKey::from_slice(&[0x17; 32]).unwrap();
    let point = key.verifying_key().to_encoded_point(false);
    let mut area = honest().ak_public.clone();
    // TPMT_PUBLIC of the AK template: 20 bytes of type, nameAlg, attributes, policy and parameters, then
    // unique = TPM2B x (32 bytes), TPM2B y (32 bytes).
    assert_eq!(area.len(), 88);
    area[22..54].copy_from_slice(point.x().unwrap());
    area[56..88].copy_from_slice(point.y().unwrap());
    (key, area)
}

/// Replaces AK and signature by the software AK's; `change` edits the attest bytes first. qualifiedSigner is
/// fixed up to the software AK's unless `change` is meant to break it (`fix_signer` false).
fn resigned(change: impl FnOnce(&mut Vec<u8>), fix_signer: bool) -> Evidence {
    let (key, area) = software_ak();
    let mut evidence = honest().clone();
    evidence.ak_public = area.clone();
    if fix_signer {
        let ak = tpm::public::PublicArea::from_bytes(&area).unwrap();
        evidence.attest[QUALIFIED_SIGNER..QUALIFIED_SIGNER + 34]
            .copy_from_slice(&checks::ak_qualified_name(&ak));
    }
    change(&mut evidence.attest);
    let signature: p256::ecdsa::Signature = key.sign(&evidence.attest);
    let (r, s) = signature.split_bytes();
    let mut bytes = vec![0x00, 0x18, 0x00, 0x0B, 0x00, 0x20];
    bytes.extend_from_slice(&r);
    bytes.extend_from_slice(&[0x00, 0x20]);
    bytes.extend_from_slice(&s);
    evidence.signature = bytes;
    evidence
}

// ---------------------------------------------------------------------------------------------------------
// The honest path.

#[test]
fn honest_evidence_verifies_and_activates() {
    let image = TestImage::standard();
    let manifest = image.manifest();
    let mut appliance = SimAppliance::boot(home(), &image, true);
    let evidence = appliance.attest(&NONCE, manifest.pcr_mask());
    assert_eq!(evidence.attest.len(), ATTEST_LEN);
    let verified = verify_evidence(&evidence, &expectation(&manifest, home_trust())).unwrap();
    assert_eq!(verified.selection.mask(), 0x70ff);
    assert_eq!(verified.events.len(), 5);
    assert_eq!(
        verified.pcrs[12], manifest.pcrs.kernel.0,
        "the manifest's PCR 12 is what the TPM computed"
    );
    assert_eq!(
        verified.ek_certificate.chain,
        ["CN=swtpm-localca", "CN=swtpm-localca-rootca"]
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let challenge = CredentialChallenge::new(&verified, &mut rng).unwrap();
    let Request::ActivateCredential {
        credential_blob,
        secret,
    } = challenge.request()
    else {
        panic!("not an ActivateCredential request");
    };
    let answer = appliance.activate(&credential_blob, &secret);
    assert_eq!(challenge.check(&answer).map(drop), Ok(()));
}

#[test]
fn resigned_evidence_passes_offline_checks_but_not_activation() {
    // The harness's software AK gives evidence that passes every offline check (so the tamper tests built on
    // it isolate one check each), and credential activation is what refuses it.
    let evidence = resigned(|_| {}, true);
    let verified = check(&evidence).expect("re-signed evidence passes offline checks");
    let image = TestImage::standard();
    let mut appliance = SimAppliance::boot(home(), &image, true);
    let challenge =
        CredentialChallenge::new(&verified, &mut rand::rngs::StdRng::seed_from_u64(2)).unwrap();
    let Request::ActivateCredential {
        credential_blob,
        secret,
    } = challenge.request()
    else {
        panic!();
    };
    assert_eq!(
        challenge.check(&appliance.activate(&credential_blob, &secret)),
        Err(VerifyError::CredentialRefused(ErrorCode::TpmFailure))
    );
}

// ---------------------------------------------------------------------------------------------------------
// One test per check.

#[test]
fn flipped_attest_byte_is_a_bad_signature() {
    for at in [CLOCK + 3, RESET_COUNT, PCR_DIGEST + 5, EXTRA_DATA + 31] {
        let evidence = tampered(|evidence| evidence.attest[at] ^= 1);
        assert_eq!(
            check(&evidence).unwrap_err(),
            VerifyError::BadSignature,
            "byte {at}"
        );
    }
    let evidence = tampered(|evidence| {
        let last = evidence.signature.len() - 1;
        evidence.signature[last] ^= 1;
    });
    assert_eq!(check(&evidence).unwrap_err(), VerifyError::BadSignature);
}

#[test]
fn wrong_nonce_is_an_extra_data_mismatch() {
    let manifest = standard_manifest();
    let mut expected = expectation(manifest, home_trust());
    expected.nonce[0] ^= 1;
    assert_eq!(
        verify_evidence(honest(), &expected).unwrap_err(),
        VerifyError::ExtraDataMismatch
    );
}

#[test]
fn nonce_as_a_prefix_or_unhashed_is_an_extra_data_mismatch() {
    let image = TestImage::standard();
    let mask = image.manifest().pcr_mask();
    let mut appliance = SimAppliance::boot(home(), &image, true);
    let qualifying = net::proto::qualifying_data(&NONCE, &BINDING);
    let mut longer = qualifying.to_vec();
    longer.extend_from_slice(&[0; 32]);
    for extra_data in [
        longer.as_slice(),
        &qualifying[..16],
        &qualifying[..31],
        NONCE.as_slice(),
        &[],
    ] {
        let evidence = appliance.quote(extra_data, mask);
        assert_eq!(
            check(&evidence).unwrap_err(),
            VerifyError::ExtraDataMismatch,
            "extraData of {} bytes",
            extra_data.len()
        );
    }
}

#[test]
fn bad_magic() {
    let evidence = tampered(|evidence| evidence.attest[3] = 0x48);
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::BadMagic(0xFF54_4348)
    );
}

#[test]
fn wrong_type() {
    // TPM_ST_ATTEST_CERTIFY.
    let evidence = tampered(|evidence| evidence.attest[5] = 0x17);
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::WrongType(0x8017)
    );
}

#[test]
fn changed_pcr_value_is_a_digest_mismatch() {
    for index in [0, 8, 10] {
        let evidence = tampered(|evidence| evidence.pcr_values[index][7] ^= 0x80);
        assert_eq!(
            check(&evidence).unwrap_err(),
            VerifyError::PcrDigestMismatch
        );
    }
}

#[test]
fn swapped_pcr_values_are_a_digest_mismatch() {
    let evidence = tampered(|evidence| evidence.pcr_values.swap(8, 9));
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::PcrDigestMismatch
    );
}

#[test]
fn other_selection_than_requested_is_refused() {
    let image = TestImage::standard();
    let mut appliance = SimAppliance::boot(home(), &image, true);
    // PCR 7 swapped for PCR 8, and PCR 14 left out.
    for quoted in [0x717f_u32, 0x30ff] {
        let evidence = appliance.attest(&NONCE, quoted);
        assert_eq!(
            check(&evidence).unwrap_err(),
            VerifyError::PcrSelectionMismatch {
                requested: 0x70ff,
                quoted
            }
        );
    }
    // Fewer or more values than PCRs quoted.
    let evidence = tampered(|evidence| {
        evidence.pcr_values.pop();
    });
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::PcrCountMismatch {
            quoted: 11,
            reported: 10
        }
    );
    let evidence = tampered(|evidence| evidence.pcr_values.push([1; 32]));
    assert!(matches!(
        check(&evidence).unwrap_err(),
        VerifyError::PcrCountMismatch { reported: 12, .. }
    ));
}

#[test]
fn foreign_ak_fails_credential_activation() {
    // The quote and AK of another TPM, presented with this appliance's certified EK: every offline check
    // passes (the foreign AK really signed it), and the appliance's TPM cannot activate a credential made for
    // the foreign AK's name.
    let image = TestImage::standard();
    let mask = image.manifest().pcr_mask();
    let mut stranger = SimAppliance::boot(foreign(), &image, true);
    let foreign_evidence = stranger.attest(&NONCE, mask);
    assert_ne!(foreign_evidence.ak_public, honest().ak_public);
    let evidence = tampered(|evidence| {
        evidence.attest = foreign_evidence.attest.clone();
        evidence.signature = foreign_evidence.signature.clone();
        evidence.ak_public = foreign_evidence.ak_public.clone();
        evidence.pcr_values = foreign_evidence.pcr_values.clone();
    });
    let verified = check(&evidence).expect("offline checks cannot tell the AKs apart");
    let mut appliance = SimAppliance::boot(home(), &image, true);
    let challenge =
        CredentialChallenge::new(&verified, &mut rand::rngs::StdRng::seed_from_u64(3)).unwrap();
    let Request::ActivateCredential {
        credential_blob,
        secret,
    } = challenge.request()
    else {
        panic!();
    };
    assert_eq!(
        challenge.check(&appliance.activate(&credential_blob, &secret)),
        Err(VerifyError::CredentialRefused(ErrorCode::TpmFailure))
    );

    // The foreign AK's public key with this TPM's quote: the signature does not verify.
    let evidence = tampered(|evidence| evidence.ak_public = foreign_evidence.ak_public.clone());
    assert_eq!(check(&evidence).unwrap_err(), VerifyError::BadSignature);
}

#[test]
fn ak_with_wrong_attributes_is_refused() {
    // TPMA_OBJECT is bytes 4..8 of the AK's TPMT_PUBLIC (0x00050072).
    let cases: [(&str, u32); 5] = [
        ("restricted cleared", 0x0004_0072),
        ("sign cleared", 0x0001_0072),
        ("fixedTPM cleared", 0x0005_0070),
        ("sensitiveDataOrigin cleared", 0x0005_0052),
        ("decrypt added", 0x0007_0072),
    ];
    for (what, attributes) in cases {
        let evidence = tampered(|evidence| {
            evidence.ak_public[4..8].copy_from_slice(&attributes.to_be_bytes())
        });
        assert_eq!(
            check(&evidence).unwrap_err(),
            VerifyError::AkAttributes(attributes),
            "{what}"
        );
    }
    // The EK (an RSA decryption key) presented as the AK.
    let evidence = tampered(|evidence| evidence.ak_public = evidence.ek_public.clone());
    assert_eq!(check(&evidence).unwrap_err(), VerifyError::AkKeyType);
    // A P-384 curve id.
    let evidence = tampered(|evidence| evidence.ak_public[16..18].copy_from_slice(&[0, 4]));
    assert!(matches!(
        check(&evidence).unwrap_err(),
        VerifyError::AkKeyType
            | VerifyError::Malformed {
                what: Field::AkPublic,
                ..
            }
    ));
}

#[test]
fn ek_certificate_from_an_untrusted_ca_is_refused() {
    // Another TPM certified by another CA whose certificates carry the same names as ours.
    let image = TestImage::standard();
    let mut stranger = SimAppliance::boot(foreign(), &image, true);
    let evidence = stranger.attest(&NONCE, image.manifest().pcr_mask());
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::EkCertificateUntrusted(CertificateError::BadSignature)
    );
    // And it verifies against its own CA: the refusal above is about trust, nothing else.
    assert!(verify_evidence(
        &evidence,
        &expectation(standard_manifest(), &foreign().trust())
    )
    .is_ok());

    // A certificate with a flipped signature byte, a truncated one, garbage.
    let evidence = tampered(|evidence| {
        let last = evidence.ek_certificate.len() - 1;
        evidence.ek_certificate[last] ^= 1;
    });
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::EkCertificateUntrusted(CertificateError::BadSignature)
    );
    let evidence = tampered(|evidence| {
        evidence.ek_certificate.truncate(100);
    });
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::EkCertificateUntrusted(CertificateError::Malformed)
    );
    let evidence = tampered(|evidence| evidence.ek_certificate.push(0));
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::EkCertificateUntrusted(CertificateError::Malformed)
    );
    // Outside the validity period (swtpm_localca certificates run to 9999-12-31).
    for (now, error) in [
        (UNIX_EPOCH, CertificateError::NotYetValid),
        (
            UNIX_EPOCH + Duration::from_secs(253_402_300_800 + 86_400),
            CertificateError::Expired,
        ),
    ] {
        let mut expected = expectation(standard_manifest(), home_trust());
        expected.now = now;
        assert_eq!(
            verify_evidence(honest(), &expected).unwrap_err(),
            VerifyError::EkCertificateUntrusted(error)
        );
    }
    // Trusting only the root, without the signing CA: the issuer is unknown.
    let root_only = TrustAnchors::from_pem_files(&home().ca.root_certificate(), &[]).unwrap();
    assert_eq!(
        verify_evidence(honest(), &expectation(standard_manifest(), &root_only)).unwrap_err(),
        VerifyError::EkCertificateUntrusted(CertificateError::UnknownIssuer)
    );
}

// ---------------------------------------------------------------------------------------------------------
// The EK chain's rules on real swtpm certificates: each one is decoded, changed in exactly one way and signed
// again with the real CA's key (swtpm_localca keeps it beside its certificate), so only the changed rule can fail.

/// A CA private key as swtpm_localca writes it (a certtool text dump, then the PKCS#1 PEM).
fn ca_key(path: &Path) -> rsa::RsaPrivateKey {
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    let text = std::fs::read_to_string(path).unwrap();
    let pem = &text[text.find("-----BEGIN").expect("a PEM block")..];
    rsa::RsaPrivateKey::from_pkcs1_pem(pem).unwrap()
}

fn home_ca_file(name: &str) -> PathBuf {
    home().ca.root_certificate().parent().unwrap().join(name)
}

fn pem_certificate(path: &Path) -> x509_cert::Certificate {
    use x509_cert::der::DecodePem as _;
    x509_cert::Certificate::from_pem(std::fs::read(path).unwrap()).unwrap()
}

/// `certificate` changed by `change` and signed again (sha256WithRSAEncryption) with `key`.
fn ca_signed(
    certificate: &x509_cert::Certificate,
    key: &rsa::RsaPrivateKey,
    change: impl FnOnce(&mut x509_cert::TbsCertificate),
) -> x509_cert::Certificate {
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    use x509_cert::der::Encode as _;
    let mut certificate = certificate.clone();
    change(&mut certificate.tbs_certificate);
    let signer = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(key.clone());
    let signature = signer.sign(&certificate.tbs_certificate.to_der().unwrap());
    certificate.signature =
        x509_cert::der::asn1::BitString::from_bytes(&signature.to_vec()).unwrap();
    certificate
}

fn der(certificate: &x509_cert::Certificate) -> Vec<u8> {
    use x509_cert::der::Encode as _;
    certificate.to_der().unwrap()
}

/// Sets (replacing) or adds an extension.
fn put_extension(
    tbs: &mut x509_cert::TbsCertificate,
    oid: &str,
    critical: bool,
    value: &impl x509_cert::der::Encode,
) {
    let extn_id = x509_cert::der::oid::ObjectIdentifier::new_unwrap(oid);
    let extension = x509_cert::ext::Extension {
        extn_id,
        critical,
        extn_value: x509_cert::der::asn1::OctetString::new(value.to_der().unwrap()).unwrap(),
    };
    let extensions = tbs.extensions.get_or_insert_with(Vec::new);
    extensions.retain(|existing| existing.extn_id != extn_id);
    extensions.push(extension);
}

fn drop_extension(tbs: &mut x509_cert::TbsCertificate, oid: &str) {
    let extn_id = x509_cert::der::oid::ObjectIdentifier::new_unwrap(oid);
    tbs.extensions
        .get_or_insert_with(Vec::new)
        .retain(|existing| existing.extn_id != extn_id);
}

const EXTENDED_KEY_USAGE: &str = "2.5.29.37";
const BASIC_CONSTRAINTS: &str = "2.5.29.19";
const KEY_USAGE: &str = "2.5.29.15";
/// An extension no verifier knows (under an arbitrary private enterprise arc).
const UNKNOWN_EXTENSION: &str = "1.3.6.1.4.1.55555.7.1";

/// The honest evidence with its EK certificate changed and re-signed by the real signing CA.
fn with_resigned_ek(change: impl FnOnce(&mut x509_cert::TbsCertificate)) -> Evidence {
    use x509_cert::der::Decode as _;
    let ek = x509_cert::Certificate::from_der(&honest().ek_certificate).unwrap();
    let changed = ca_signed(&ek, &ca_key(&home_ca_file("signkey.pem")), change);
    tampered(|evidence| evidence.ek_certificate = der(&changed))
}

#[test]
fn ek_certificate_needs_the_ek_usage_and_no_unknown_critical_extension() {
    // swtpm's certificate as it is carries tcg-kp-EKCertificate; signing it again changes nothing.
    assert!(check(&with_resigned_ek(|_| {})).is_ok());
    // Without the extended key usage, or with another usage only (TLS server authentication).
    let untrusted = |error| VerifyError::EkCertificateUntrusted(error);
    let evidence = with_resigned_ek(|tbs| drop_extension(tbs, EXTENDED_KEY_USAGE));
    assert_eq!(
        check(&evidence).unwrap_err(),
        untrusted(CertificateError::NotAnEkCertificate)
    );
    let server_auth = x509_cert::ext::pkix::ExtendedKeyUsage(vec![
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1"),
    ]);
    let evidence =
        with_resigned_ek(|tbs| put_extension(tbs, EXTENDED_KEY_USAGE, false, &server_auth));
    assert_eq!(
        check(&evidence).unwrap_err(),
        untrusted(CertificateError::NotAnEkCertificate)
    );
    // An extension nobody understands: refused when critical, ignored when not.
    let null = x509_cert::der::asn1::Null;
    let evidence = with_resigned_ek(|tbs| put_extension(tbs, UNKNOWN_EXTENSION, true, &null));
    let error = check(&evidence).unwrap_err();
    assert_eq!(
        error,
        untrusted(CertificateError::UnknownCriticalExtension(
            x509_cert::der::oid::ObjectIdentifier::new_unwrap(UNKNOWN_EXTENSION)
        ))
    );
    assert!(error.to_string().contains(UNKNOWN_EXTENSION), "{error}");
    let evidence = with_resigned_ek(|tbs| put_extension(tbs, UNKNOWN_EXTENSION, false, &null));
    assert!(check(&evidence).is_ok());
}

#[test]
fn ek_chain_issuers_need_cert_signing_usage_a_fitting_path_length_and_no_unknown_critical_extension(
) {
    let root = pem_certificate(&home().ca.root_certificate());
    let issuer = pem_certificate(&home().ca.issuer_certificate());
    let root_key = ca_key(&home_ca_file("swtpm-localca-rootca-privkey.pem"));
    let verify_with = |root: x509_cert::Certificate, issuer: x509_cert::Certificate| {
        let trust = TrustAnchors::new(root, vec![issuer]);
        verify_evidence(honest(), &expectation(standard_manifest(), &trust)).map(|_| ())
    };
    let untrusted = |error| Err(VerifyError::EkCertificateUntrusted(error));
    // The real chain, and the issuer signed again unchanged.
    assert_eq!(verify_with(root.clone(), issuer.clone()), Ok(()));
    assert_eq!(
        verify_with(root.clone(), ca_signed(&issuer, &root_key, |_| {})),
        Ok(())
    );

    // The signing CA with a key usage for signatures only (no keyCertSign).
    let signatures_only =
        x509_cert::ext::pkix::KeyUsage(x509_cert::ext::pkix::KeyUsages::DigitalSignature.into());
    let issuer_without_cert_sign = ca_signed(&issuer, &root_key, |tbs| {
        put_extension(tbs, KEY_USAGE, true, &signatures_only)
    });
    assert_eq!(
        verify_with(root.clone(), issuer_without_cert_sign),
        untrusted(CertificateError::IssuerMayNotSignCertificates)
    );
    // Without any key usage extension the RFC 5280 rule does not apply.
    let issuer_without_key_usage =
        ca_signed(&issuer, &root_key, |tbs| drop_extension(tbs, KEY_USAGE));
    assert_eq!(verify_with(root.clone(), issuer_without_key_usage), Ok(()));
    // The signing CA not marked as a CA.
    let not_a_ca = x509_cert::ext::pkix::BasicConstraints {
        ca: false,
        path_len_constraint: None,
    };
    let issuer_not_ca = ca_signed(&issuer, &root_key, |tbs| {
        put_extension(tbs, BASIC_CONSTRAINTS, true, &not_a_ca)
    });
    assert_eq!(
        verify_with(root.clone(), issuer_not_ca),
        untrusted(CertificateError::IssuerNotCa)
    );
    // An unknown critical extension on the intermediate.
    let null = x509_cert::der::asn1::Null;
    let issuer_unknown = ca_signed(&issuer, &root_key, |tbs| {
        put_extension(tbs, UNKNOWN_EXTENSION, true, &null)
    });
    assert!(matches!(
        verify_with(root.clone(), issuer_unknown),
        Err(VerifyError::EkCertificateUntrusted(
            CertificateError::UnknownCriticalExtension(_)
        ))
    ));

    // A root allowing no CA below it (pathLen 0) refuses the signing CA; pathLen 1 admits it.
    let root_with_path_length = |limit: u8| {
        let constraints = x509_cert::ext::pkix::BasicConstraints {
            ca: true,
            path_len_constraint: Some(limit),
        };
        ca_signed(&root, &root_key, |tbs| {
            put_extension(tbs, BASIC_CONSTRAINTS, true, &constraints)
        })
    };
    assert_eq!(
        verify_with(root_with_path_length(0), issuer.clone()),
        untrusted(CertificateError::PathLengthExceeded)
    );
    assert_eq!(verify_with(root_with_path_length(1), issuer), Ok(()));
}

#[test]
fn an_ek_ca_bundle_trusts_several_cas_side_by_side() {
    let image = TestImage::standard();
    let mut stranger = SimAppliance::boot(foreign(), &image, true);
    let foreign_evidence = stranger.attest(&NONCE, image.manifest().pcr_mask());
    let scratch = tempfile::tempdir().unwrap();

    // One file holding both CAs' roots and intermediates (they carry the same names, so the chain search must
    // try each candidate), and the same four as separate files.
    let mut bundle = Vec::new();
    let files = [
        home().ca.root_certificate(),
        home().ca.issuer_certificate(),
        foreign().ca.root_certificate(),
        foreign().ca.issuer_certificate(),
    ];
    for file in &files {
        bundle.extend(std::fs::read(file).unwrap());
    }
    let bundle_path = scratch.path().join("bundle.pem");
    std::fs::write(&bundle_path, bundle).unwrap();
    let separate: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    for trust in [
        TrustAnchors::from_pem_bundle(&[&bundle_path]).unwrap(),
        TrustAnchors::from_pem_bundle(&separate).unwrap(),
    ] {
        assert_eq!(trust.counts(), (2, 2));
        for evidence in [honest(), &foreign_evidence] {
            verify_evidence(evidence, &expectation(standard_manifest(), &trust))
                .expect("each CA's EK certificate verifies against the bundle");
        }
    }

    // Only the foreign CA: the home TPM's certificate is refused.
    let foreign_only = TrustAnchors::from_pem_bundle(&separate[2..]).unwrap();
    assert_eq!(
        verify_evidence(honest(), &expectation(standard_manifest(), &foreign_only)).unwrap_err(),
        VerifyError::EkCertificateUntrusted(CertificateError::BadSignature)
    );
    // Intermediates without a root end no chain: refused when the bundle is read, naming what to add.
    let error = TrustAnchors::from_pem_bundle(&[separate[1], separate[3]]).unwrap_err();
    assert!(error.to_string().contains("self-signed root"), "{error}");
    // A file without a certificate names itself.
    let empty = scratch.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let error = TrustAnchors::from_pem_bundle(&[&empty]).unwrap_err();
    assert!(error.to_string().contains("empty.pem"), "{error}");
}

#[test]
fn ek_certificate_for_another_key_is_refused() {
    let image = TestImage::standard();
    let mut stranger = SimAppliance::boot(foreign(), &image, true);
    let foreign_ek = stranger.attest(&NONCE, 0x1000).ek_public;
    let evidence = tampered(|evidence| evidence.ek_public = foreign_ek.clone());
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::EkCertificateKeyMismatch
    );
    // An EK public area that is not the default template (attributes changed).
    let evidence = tampered(|evidence| evidence.ek_public[7] ^= 0x40);
    assert_eq!(check(&evidence).unwrap_err(), VerifyError::EkTemplate);
}

#[test]
fn wrong_activation_secret_is_refused() {
    let image = TestImage::standard();
    let mut appliance = SimAppliance::boot(home(), &image, true);
    let evidence = appliance.attest(&NONCE, image.manifest().pcr_mask());
    let verified =
        verify_evidence(&evidence, &expectation(&image.manifest(), home_trust())).unwrap();
    let challenge =
        CredentialChallenge::new(&verified, &mut rand::rngs::StdRng::seed_from_u64(4)).unwrap();
    let Request::ActivateCredential {
        credential_blob,
        secret,
    } = challenge.request()
    else {
        panic!();
    };
    let Response::Credential(recovered) = appliance.activate(&credential_blob, &secret) else {
        panic!("activation failed");
    };
    assert_eq!(
        challenge
            .check(&Response::Credential(recovered.clone()))
            .map(drop),
        Ok(())
    );
    let mut wrong = recovered.clone();
    wrong[31] ^= 1;
    for answer in [
        wrong,
        recovered[..31].to_vec(),
        Vec::new(),
        [recovered.clone(), vec![0]].concat(),
    ] {
        assert_eq!(
            challenge.check(&Response::Credential(answer)),
            Err(VerifyError::CredentialMismatch)
        );
    }
    // A secret from another challenge (the appliance replaying an old answer).
    let other =
        CredentialChallenge::new(&verified, &mut rand::rngs::StdRng::seed_from_u64(5)).unwrap();
    assert_eq!(
        other.check(&Response::Credential(recovered)),
        Err(VerifyError::CredentialMismatch)
    );
    assert!(matches!(
        challenge.check(&Response::Evidence(evidence)),
        Err(VerifyError::Malformed {
            what: Field::Response,
            ..
        })
    ));
}

#[test]
fn event_log_not_matching_the_pcrs_is_refused() {
    // The model event's digest (event 2 starts at 8 + 35 bytes plus the first event's description, "kernel
    // text, rodata and data"; its digest 2 bytes further).
    let evidence = tampered(|evidence| evidence.event_log[8 + 35 + 28 + 2] ^= 1);
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::EventLogReplayMismatch { pcr: 13 }
    );
    // A log that leaves out the command line.
    let mut log = EventLog::parse(&honest().event_log).unwrap();
    let mut shorter = EventLog::new();
    for event in log.events().take(4) {
        shorter.push(*event).unwrap();
    }
    let mut bytes = vec![0u8; shorter.buffer_len()];
    shorter.emit(&mut bytes).unwrap();
    let evidence = tampered(|evidence| evidence.event_log = bytes.clone());
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::EventLogReplayMismatch { pcr: 14 }
    );
    // An extra event on a PCR that is not replayed still changes nothing the quote vouches for; the manifest
    // refuses the sequence.
    log.push(tpm::eventlog::Event::new(15, EventKind::Other, [1; 32], "extra").unwrap())
        .unwrap();
    let mut bytes = vec![0u8; log.buffer_len()];
    log.emit(&mut bytes).unwrap();
    let evidence = tampered(|evidence| evidence.event_log = bytes.clone());
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::ManifestMismatch {
            what: ManifestItem::EventSequence
        }
    );
}

#[test]
fn manifest_digest_mismatches_name_the_measurement() {
    let other_model = TestImage::new(0, b"GGUF a different model", "ip=dhcp port=7000");
    let other_kernel = TestImage::new(9, b"GGUF tiny test model", "ip=dhcp port=7000");
    // Each of these changes exactly one event: an ignored extra word changes only the command line's bytes.
    let other_cmdline = TestImage::new(0, b"GGUF tiny test model", "ip=dhcp port=7000 note=x");
    let other_serving = TestImage::new(0, b"GGUF tiny test model", "ip=dhcp port=7000 ctx=512");
    let other_config = TestImage::new(0, b"GGUF tiny test model", "ip=dhcp port=7001");
    for (image, what) in [
        (other_model, ManifestItem::Model),
        (other_kernel, ManifestItem::Kernel),
        (other_cmdline, ManifestItem::CommandLine),
        (other_serving, ManifestItem::ServingParameters),
        (other_config, ManifestItem::Configuration),
    ] {
        let manifest = image.manifest();
        assert_eq!(
            verify_evidence(honest(), &expectation(&manifest, home_trust())).unwrap_err(),
            VerifyError::ManifestMismatch { what },
            "{what}"
        );
    }
}

#[test]
fn firmware_pcrs_zero_or_not_golden_are_refused() {
    // No firmware measured anything: PCR 0 is all zero.
    let image = TestImage::standard();
    let mut bare = SimAppliance::boot(home(), &image, false);
    let evidence = bare.attest(&NONCE, image.manifest().pcr_mask());
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::FirmwarePcrZero(0)
    );

    // Golden values: equal passes, one differing names its PCR.
    let values = &honest().pcr_values;
    let golden = |pcr3: [u8; 32]| {
        let pcrs = [(0u8, Sha256Digest(values[0])), (3, Sha256Digest(pcr3))]
            .into_iter()
            .collect();
        standard_manifest()
            .clone()
            .with_golden_firmware("swtpm test platform", pcrs)
            .unwrap()
    };
    let good = golden(values[3]);
    assert!(verify_evidence(honest(), &expectation(&good, home_trust())).is_ok());
    let bad = golden([3; 32]);
    assert_eq!(
        verify_evidence(honest(), &expectation(&bad, home_trust())).unwrap_err(),
        VerifyError::FirmwarePcrMismatch(3)
    );
}

#[test]
fn sha1_is_refused() {
    // The quote's PCR bank.
    let evidence = tampered(|evidence| evidence.attest[BANK_HASH + 1] = 0x04);
    assert_eq!(check(&evidence).unwrap_err(), VerifyError::Sha1Refused);
    // The signature's hash.
    let evidence = tampered(|evidence| evidence.signature[3] = 0x04);
    assert_eq!(check(&evidence).unwrap_err(), VerifyError::Sha1Refused);
    // The AK's nameAlg and its scheme's hash.
    let evidence = tampered(|evidence| evidence.ak_public[3] = 0x04);
    assert_eq!(check(&evidence).unwrap_err(), VerifyError::Sha1Refused);
    let evidence = tampered(|evidence| evidence.ak_public[15] = 0x04);
    assert_eq!(check(&evidence).unwrap_err(), VerifyError::Sha1Refused);
}

#[test]
fn signature_scheme_must_match_the_key() {
    // RSASSA instead of ECDSA, and ECDSA with SHA-384.
    let evidence = tampered(|evidence| evidence.signature[1] = 0x14);
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::SignatureSchemeMismatch {
            signature: (0x0014, 0),
            key: (0x0018, 0x000B)
        }
    );
    let evidence = tampered(|evidence| evidence.signature[3] = 0x0C);
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::SignatureSchemeMismatch {
            signature: (0x0018, 0x000C),
            key: (0x0018, 0x000B)
        }
    );
}

#[test]
fn qualified_signer_must_be_the_ak() {
    let evidence = resigned(|attest| attest[QUALIFIED_SIGNER + 20] ^= 1, true);
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::QualifiedSignerMismatch
    );
    // Signed by the software AK while still naming the TPM's AK.
    let evidence = resigned(|_| {}, false);
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::QualifiedSignerMismatch
    );
}

#[test]
fn clock_must_be_safe_and_counters_must_not_go_back() {
    let evidence = resigned(|attest| attest[SAFE] = 0, true);
    assert_eq!(check(&evidence).unwrap_err(), VerifyError::ClockNotSafe);

    let quoted = check(honest()).unwrap().clock;
    let mut expected = expectation(standard_manifest(), home_trust());
    for previous in [
        ClockCounters {
            reset_count: quoted.reset_count + 1,
            ..quoted
        },
        ClockCounters {
            restart_count: quoted.restart_count + 1,
            ..quoted
        },
        ClockCounters {
            clock: quoted.clock + 1,
            ..quoted
        },
    ] {
        expected.previous_clock = Some(previous);
        assert_eq!(
            verify_evidence(honest(), &expected).unwrap_err(),
            VerifyError::ClockRollback { previous, quoted }
        );
    }
    expected.previous_clock = Some(ClockCounters {
        clock: quoted.clock.saturating_sub(1),
        ..quoted
    });
    assert!(verify_evidence(honest(), &expected).is_ok());
}

#[test]
fn pcr_digest_is_recomputed() {
    // A validly signed quote whose pcrDigest is not over the reported values.
    let evidence = resigned(|attest| attest[PCR_DIGEST] ^= 1, true);
    assert_eq!(
        check(&evidence).unwrap_err(),
        VerifyError::PcrDigestMismatch
    );
}

#[test]
fn truncated_trailing_and_oversized_structures_are_refused() {
    let honest = honest();
    assert_eq!(
        check(&tampered(|e| e.attest.truncate(ATTEST_LEN - 1))).unwrap_err(),
        VerifyError::Truncated(Field::Attest)
    );
    assert_eq!(
        check(&tampered(|e| e.attest.push(0))).unwrap_err(),
        VerifyError::TrailingBytes(Field::Attest)
    );
    assert_eq!(
        check(&tampered(|e| {
            e.signature.pop();
        }))
        .unwrap_err(),
        VerifyError::Truncated(Field::Signature)
    );
    assert_eq!(
        check(&tampered(|e| e.signature.push(0))).unwrap_err(),
        VerifyError::TrailingBytes(Field::Signature)
    );
    assert_eq!(
        check(&tampered(|e| {
            e.event_log.pop();
        }))
        .unwrap_err(),
        VerifyError::Truncated(Field::EventLog)
    );
    assert_eq!(
        check(&tampered(|e| e.event_log.push(0))).unwrap_err(),
        VerifyError::TrailingBytes(Field::EventLog)
    );
    for (what, change) in [
        (
            Field::AkPublic,
            (|e: &mut Evidence| e.ak_public.push(0)) as Tamper,
        ),
        (Field::AkPublic, |e| {
            e.ak_public.pop();
        }),
        (Field::EkPublic, |e| e.ek_public.push(0)),
        (Field::EkPublic, |e| {
            e.ek_public.pop();
        }),
    ] {
        assert!(
            matches!(check(&tampered(change)).unwrap_err(), VerifyError::Malformed { what: found, .. } if found == what),
            "{what:?}"
        );
    }
    // Oversized fields are refused before anything is parsed.
    let oversized: [(Field, Tamper); 6] = [
        (Field::Attest, |e| e.attest.resize(1025, 0)),
        (Field::Signature, |e| e.signature.resize(161, 0)),
        (Field::AkPublic, |e| e.ak_public.resize(641, 0)),
        (Field::EkCertificate, |e| e.ek_certificate.resize(4097, 0)),
        (Field::PcrValues, |e| e.pcr_values.resize(25, [0; 32])),
        (Field::EventLog, |e| e.event_log.resize(1 << 20, 0)),
    ];
    for (what, change) in oversized {
        assert!(
            matches!(check(&tampered(change)).unwrap_err(), VerifyError::Oversized { what: found, .. } if found == what),
            "{what:?}"
        );
    }
    // Every truncation of every field is an error, never a panic.
    for cut in 0..honest.attest.len() {
        assert!(check(&tampered(|e| e.attest.truncate(cut))).is_err());
    }
    for cut in 0..honest.signature.len() {
        assert!(check(&tampered(|e| e.signature.truncate(cut))).is_err());
    }
    for cut in 0..honest.ak_public.len() {
        assert!(check(&tampered(|e| e.ak_public.truncate(cut))).is_err());
    }
    for cut in 0..honest.ek_public.len() {
        assert!(check(&tampered(|e| e.ek_public.truncate(cut))).is_err());
    }
    for cut in (0..honest.ek_certificate.len()).step_by(7) {
        assert!(check(&tampered(|e| e.ek_certificate.truncate(cut))).is_err());
    }
    for cut in 0..honest.event_log.len() {
        assert!(check(&tampered(|e| e.event_log.truncate(cut))).is_err());
    }
}

#[test]
fn random_mutations_never_panic_and_signed_bytes_never_pass() {
    let honest = honest();
    let mut rng = rand::rngs::StdRng::seed_from_u64(77);
    let mut refused = 0;
    for round in 0..3000 {
        let mut evidence = honest.clone();
        let field = rand::Rng::gen_range(&mut rng, 0..5);
        let bytes = match field {
            0 => &mut evidence.attest,
            1 => &mut evidence.signature,
            2 => &mut evidence.ak_public,
            3 => &mut evidence.ek_public,
            _ => &mut evidence.ek_certificate,
        };
        let at = rand::Rng::gen_range(&mut rng, 0..bytes.len());
        let value: u8 = rand::Rng::gen(&mut rng);
        if bytes[at] == value {
            continue;
        }
        bytes[at] = value;
        // Every byte of these fields is signed, certified, or checked against the template.
        assert!(
            check(&evidence).is_err(),
            "round {round}: field {field} byte {at} = {value:#x} accepted"
        );
        refused += 1;
    }
    assert!(refused > 2500);
}

// ---------------------------------------------------------------------------------------------------------
// The client over TCP, the report, and the exported evidence under tpm2_checkquote.

/// Serves one connection from `appliance`, as the kernel does: framed requests in, framed responses out.
/// `tamper` may change each response.
fn serve(
    mut appliance: SimAppliance,
    tamper: fn(Response) -> Response,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    // One TLS connection through net's TLS server; quotes are bound to that session as the appliance binds them.
    let server = client::loopback::Loopback::start(1, move |request, binding| {
        appliance.binding = *binding;
        client::loopback::Reply::Respond(tamper(appliance.answer(request)))
    })
    .unwrap();
    let address = server.address();
    let thread = std::thread::spawn(move || {
        server.join().unwrap();
    });
    (address, thread)
}

fn require_checkquote() {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("tpm2_checkquote").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "tpm2_checkquote is required: install the Debian package `tpm2-tools` (apt-get install tpm2-tools)"
    );
}

#[test]
fn verify_appliance_over_tcp_reports_and_exports_for_tpm2_checkquote() {
    require_checkquote();
    let image = TestImage::standard();
    let manifest = image.manifest();
    let manifest_path = image.dir.path().join("manifest.json");
    manifest.write(&manifest_path).unwrap();
    let manifest = Manifest::read(&manifest_path).unwrap();
    let appliance = SimAppliance::boot(home(), &image, true);
    let (address, server) = serve(appliance, |response| response);
    let export = tempfile::tempdir().unwrap();
    let options = VerifyOptions {
        export_evidence: Some(export.path().join("evidence")),
        trust_host: true,
        ..VerifyOptions::default()
    };
    let report = verify_appliance(address, &manifest, home_trust(), &options).unwrap();
    server.join().unwrap();

    assert!(report.verified);
    assert_eq!(report.pcrs.len(), 11);
    assert_eq!(
        report
            .events
            .iter()
            .map(|event| event.kind)
            .collect::<Vec<_>>(),
        [
            "kernel image",
            "model",
            "serving parameters",
            "configuration",
            "command line"
        ]
    );
    assert_eq!(report.events[1].digest, manifest.model.sha256.to_string());
    assert!(report.checks.contains(&"credential activation"));
    assert!(report.evidence_bytes > 1000, "{}", report.evidence_bytes);
    let text = report.to_string();
    assert!(
        text.starts_with("VERIFIED: appliance at 127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("model blob (initrd)"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["verified"], true);
    // A direct manifest: every form of the report says the host operator is trusted.
    assert_eq!(json["root_of_trust"]["host_trusted"], true);
    assert_eq!(json["root_of_trust"]["boot"], "direct");
    for text in [&text, &report.short(), &report.summary()] {
        assert!(text.contains("HOST OPERATOR TRUSTED"), "{text}");
    }
    assert!(!report.checks.contains(&"firmware event log"));
    assert_eq!(json["pcrs"][8]["pcr"], 12);
    assert_eq!(json["pcrs"][8]["value"], manifest.pcrs.kernel.to_string());
    eprintln!(
        "attest round trip {:.1} ms, activation {:.1} ms, evidence {} bytes",
        report.timing.attest_round_trip_ms,
        report.timing.activation_round_trip_ms,
        report.evidence_bytes
    );

    // tpm2_checkquote (tpm2-tools, written by nobody here) accepts the exported quote.
    let dir = export.path().join("evidence");
    let qualification = std::fs::read_to_string(dir.join("qualification.hex")).unwrap();
    let command = client::verify::CheckquoteCommand {
        dir: dir.clone(),
        args: std::fs::read_to_string(dir.join("checkquote.txt"))
            .unwrap()
            .trim()
            .split(' ')
            .skip(1)
            .map(String::from)
            .collect(),
    };
    assert!(command.args.contains(&qualification.trim().to_string()));
    let output = command.run().expect("run tpm2_checkquote");
    assert!(
        output.status.success(),
        "tpm2_checkquote rejected the exported evidence: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // And it rejects the same files with a changed PCR value (PCR 12, the first digest of the second
    // TPML_DIGEST), so its success means something.
    let mut pcrs = std::fs::read(dir.join("pcrs.bin")).unwrap();
    pcrs[132 + 4 + 532 + 4 + 2 + 3] ^= 1;
    std::fs::write(dir.join("pcrs.bin"), pcrs).unwrap();
    assert!(!command.run().unwrap().status.success());
}

#[test]
fn verify_appliance_names_the_failed_check() {
    // The model file differs from the manifest's.
    let image = TestImage::standard();
    let booted = TestImage::new(0, b"GGUF another model", "ip=dhcp port=7000");
    let appliance = SimAppliance::boot(home(), &booted, true);
    let (address, server) = serve(appliance, |response| response);
    let error = verify_appliance(
        address,
        &image.manifest(),
        home_trust(),
        &VerifyOptions {
            trust_host: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap_err();
    drop(server);
    assert_eq!(
        error.downcast_ref::<VerifyError>(),
        Some(&VerifyError::ManifestMismatch {
            what: ManifestItem::Model
        })
    );
    assert!(
        error.to_string().contains("[manifest]") && error.to_string().contains("model (PCR 13)"),
        "{error}"
    );

    // An appliance that answers the credential challenge with another secret.
    let appliance = SimAppliance::boot(home(), &image, true);
    let (address, server) = serve(appliance, |response| match response {
        Response::Credential(mut secret) => {
            secret[0] ^= 1;
            Response::Credential(secret)
        }
        other => other,
    });
    let error = verify_appliance(
        address,
        &image.manifest(),
        home_trust(),
        &VerifyOptions {
            trust_host: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap_err();
    server.join().unwrap();
    assert_eq!(
        error.downcast_ref::<VerifyError>(),
        Some(&VerifyError::CredentialMismatch)
    );
}

#[test]
fn exported_files_have_the_forms_tpm2_checkquote_reads() {
    let dir = tempfile::tempdir().unwrap();
    let command =
        client::verify::export_evidence(dir.path(), honest(), &NONCE, &BINDING, 0x70ff).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("quote.msg")).unwrap(),
        honest().attest
    );
    assert_eq!(
        std::fs::read(dir.path().join("quote.sig")).unwrap(),
        honest().signature
    );
    assert_eq!(
        std::fs::read(dir.path().join("pcrs.values")).unwrap(),
        honest().pcr_values.concat()
    );
    // TPML_PCR_SELECTION (132 bytes), the list count, two TPML_DIGEST of 532 bytes.
    let pcrs = std::fs::read(dir.path().join("pcrs.bin")).unwrap();
    assert_eq!(pcrs.len(), 132 + 4 + 2 * 532);
    assert_eq!(&pcrs[..11], &[1, 0, 0, 0, 0x0b, 0, 3, 0xff, 0x70, 0, 0]);
    assert_eq!(&pcrs[132..142], &[2, 0, 0, 0, 8, 0, 0, 0, 32, 0]);
    assert_eq!(&pcrs[142..174], &honest().pcr_values[0]);
    assert_eq!(&pcrs[136 + 532..136 + 532 + 6], &[3, 0, 0, 0, 32, 0]);
    let pem = std::fs::read_to_string(dir.path().join("ak.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert_eq!(
        command.command_line(),
        format!(
            "tpm2_checkquote -u ak.pem -m quote.msg -s quote.sig -g sha256 -f pcrs.bin -q {}",
            runner::models::hex(&net::proto::qualifying_data(&NONCE, &BINDING))
        )
    );
    let _: &Path = &command.dir;
}

#[test]
fn a_direct_manifest_is_refused_without_trust_host() {
    // Nothing measured a directly booted kernel: without --trust-host the client refuses, naming the check.
    let image = TestImage::standard();
    let appliance = SimAppliance::boot(home(), &image, true);
    let (address, server) = serve(appliance, |response| response);
    let error = verify_appliance(
        address,
        &image.manifest(),
        home_trust(),
        &VerifyOptions::default(),
    )
    .unwrap_err();
    drop(server);
    assert_eq!(
        error.downcast_ref::<VerifyError>(),
        Some(&VerifyError::HostNotTrusted)
    );
    assert!(
        error.to_string().contains("[root of trust]") && error.to_string().contains("--trust-host"),
        "{error}"
    );
}

#[test]
fn a_debug_console_manifest_is_refused_without_allow_debug_image() {
    // A debug-console image prints its boot and errors on the serial port: without --allow-debug-image the client
    // refuses its manifest, naming the check; with it, the report names the image.
    let image = TestImage::standard();
    let manifest = image.manifest().with_console(true);
    let options = VerifyOptions {
        trust_host: true,
        ..VerifyOptions::default()
    };
    let (address, server) = serve(SimAppliance::boot(home(), &image, true), |r| r);
    let error = verify_appliance(address, &manifest, home_trust(), &options).unwrap_err();
    drop(server);
    assert_eq!(
        error.downcast_ref::<VerifyError>(),
        Some(&VerifyError::DebugImage)
    );
    assert!(
        error.to_string().contains("[image kind]")
            && error.to_string().contains("--allow-debug-image"),
        "{error}"
    );

    let allowed = VerifyOptions {
        allow_debug_image: true,
        ..options.clone()
    };
    let (address, server) = serve(SimAppliance::boot(home(), &image, true), |r| r);
    let report = verify_appliance(address, &manifest, home_trust(), &allowed).unwrap();
    server.join().unwrap();
    assert!(report.image.debug_console);
    assert!(report.checks.contains(&"image kind"));
    for text in [
        report.to_string(),
        report.short(),
        report.summary(),
        report.to_json(),
    ] {
        assert!(text.contains("DEBUG IMAGE"), "{text}");
    }

    // The release manifest of the same image needs no flag, and its report says it is a release image.
    let (address, server) = serve(SimAppliance::boot(home(), &image, true), |r| r);
    let report = verify_appliance(address, &image.manifest(), home_trust(), &options).unwrap();
    server.join().unwrap();
    assert!(!report.image.debug_console);
    assert!(!report.to_string().contains("DEBUG IMAGE"));
}

#[test]
fn the_cli_entry_verifies_and_names_the_failed_check() {
    let image = TestImage::standard();
    let manifest_path = image.dir.path().join("manifest.json");
    image.manifest().write(&manifest_path).unwrap();
    let args = |endpoint: SocketAddr| runner::verify::VerifyArgs {
        endpoint: endpoint.to_string(),
        manifest: manifest_path.clone(),
        json: true,
        export_evidence: None,
        ek_ca: vec![home().ca.root_certificate(), home().ca.issuer_certificate()],
        timeout: 30,
        // Every SimAppliance boots a copy of one provisioned state, so its clock can read earlier than the last
        // boot's: a store shared between boots would (rightly) call that a rollback.
        observations: Some(
            image
                .dir
                .path()
                .join(format!("observations-{endpoint}.json")),
        ),
        trust_host: true,
        allow_debug_image: false,
    };
    let (address, server) = serve(SimAppliance::boot(home(), &image, true), |r| r);
    runner::verify::run(args(address)).unwrap();
    server.join().unwrap();
    let remembered = image
        .dir
        .path()
        .join(format!("observations-{address}.json"));
    assert!(
        std::fs::read_to_string(&remembered)
            .expect("--observations names the store the accepted quote was recorded in")
            .contains("\"clock\""),
        "{}",
        remembered.display()
    );

    // The foreign CA's root alone trusts nothing this appliance shows.
    let (address, server) = serve(SimAppliance::boot(home(), &image, true), |r| r);
    let mut foreign_args = args(address);
    foreign_args.ek_ca = vec![
        foreign().ca.root_certificate(),
        foreign().ca.issuer_certificate(),
    ];
    let error = runner::verify::run(foreign_args).unwrap_err();
    drop(server);
    assert_eq!(
        error.downcast_ref::<VerifyError>(),
        Some(&VerifyError::EkCertificateUntrusted(
            CertificateError::BadSignature
        ))
    );
    assert!(
        error.to_string().contains("[EK certificate chain]"),
        "{error}"
    );
}

#[test]
fn remembered_clock_counters_must_not_go_back() {
    // The CLI keeps each accepted quote's counters per AK; the next verification of that TPM must not see them
    // go back (docs/ARCHITECTURE.md §4 "resetCount/restartCount sane").
    let image = TestImage::standard();
    let manifest = image.manifest();
    let store_dir = tempfile::tempdir().unwrap();
    let store = client::verify::Observations::in_cache(store_dir.path());
    let options = VerifyOptions {
        observations: Some(store.clone()),
        trust_host: true,
        ..VerifyOptions::default()
    };
    let ak_public = honest().ak_public.clone();
    assert_eq!(store.previous(&ak_public).unwrap(), None);

    // First verification: recorded.
    let (address, server) = serve(SimAppliance::boot(home(), &image, true), |response| {
        response
    });
    let first = verify_appliance(address, &manifest, home_trust(), &options).unwrap();
    server.join().unwrap();
    assert!(first.verified);
    let recorded = store
        .previous(&ak_public)
        .unwrap()
        .expect("counters recorded");

    // The store now claims a later TPM reset than the TPM reports: the next quote's counters went back.
    store
        .record(
            &ak_public,
            ClockCounters {
                reset_count: recorded.reset_count + 1000,
                ..recorded
            },
        )
        .unwrap();
    let (address, server) = serve(SimAppliance::boot(home(), &image, true), |response| {
        response
    });
    let error = verify_appliance(address, &manifest, home_trust(), &options).unwrap_err();
    server.join().unwrap();
    assert!(
        matches!(
            error.downcast_ref::<VerifyError>(),
            Some(VerifyError::ClockRollback { .. })
        ),
        "{error:#}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// `cloister chat --json` against the simulated appliance: its lines, and the exit codes a script reads (README,
// "Exit codes").

/// Serves one connection from `appliance`, answering a generate request with `generate`.
fn serve_chat(
    mut appliance: SimAppliance,
    generate: client::loopback::Reply,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let server = client::loopback::Loopback::start(1, move |request, binding| {
        appliance.binding = *binding;
        match request {
            Request::Generate(_) => generate.clone(),
            other => client::loopback::Reply::Respond(appliance.answer(other)),
        }
    })
    .unwrap();
    let address = server.address();
    let thread = std::thread::spawn(move || {
        server.join().unwrap();
    });
    (address, thread)
}

/// Runs `cloister chat --json` against `address` with the home CA; returns exit code, stdout lines and stderr.
fn chat_json(address: SocketAddr, manifest: &Path) -> (i32, Vec<serde_json::Value>, String) {
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["chat", "--json", "--trust-host", "--max-tokens", "2"])
        .args(["--endpoint", &address.to_string(), "--manifest"])
        .arg(manifest)
        .arg("--ca-root")
        .arg(home().ca.root_certificate())
        .arg("--ca-intermediate")
        .arg(home().ca.issuer_certificate())
        .arg("--observations")
        .arg(scratch.path().join("observations.json"))
        .env("CLOISTER_CACHE", scratch.path().join("cache"))
        .arg("hello")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line:?}: {error}")))
        .collect();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), lines, stderr)
}

#[test]
fn chat_json_prints_the_report_each_token_and_the_timings_one_object_per_line() {
    let image = TestImage::standard();
    let manifest_path = image.dir.path().join("manifest.json");
    image.manifest().write(&manifest_path).unwrap();
    let frames = vec![
        Response::Token(net::proto::Token {
            id: 17,
            text: "Hel".into(),
        }),
        Response::Token(net::proto::Token {
            id: 18,
            text: "lo\n".into(),
        }),
        Response::Done(net::proto::Done {
            reason: net::proto::FinishReason::Length,
            prompt_tokens: 9,
            generated_tokens: 2,
            prefill_us: 1500,
            decode_us: 700,
        }),
    ];
    let reply = client::loopback::Reply::Stream {
        frames,
        interval: Duration::ZERO,
    };
    let (address, server) = serve_chat(SimAppliance::boot(home(), &image, true), reply);
    let (code, lines, stderr) = chat_json(address, &manifest_path);
    server.join().unwrap();
    assert_eq!(code, 0, "{stderr}");
    let events: Vec<&str> = lines
        .iter()
        .map(|line| line["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["verification", "token", "token", "done"],
        "{lines:?}"
    );
    assert_eq!(lines[0]["report"]["verified"], true);
    assert_eq!(lines[0]["report"]["root_of_trust"]["host_trusted"], true);
    assert_eq!(
        (lines[1]["id"].as_u64(), lines[1]["text"].as_str()),
        (Some(17), Some("Hel"))
    );
    assert_eq!(lines[2]["text"], "lo\n");
    let done = &lines[3];
    assert_eq!(done["finish"], "length");
    assert_eq!(
        (
            done["prompt_tokens"].as_u64(),
            done["generated_tokens"].as_u64()
        ),
        (Some(9), Some(2))
    );
    assert_eq!(
        (done["prefill_us"].as_u64(), done["decode_us"].as_u64()),
        (Some(1500), Some(700))
    );
    assert!(
        done["client"]["elapsed_ms"].as_f64().unwrap() > 0.0,
        "{done}"
    );
    assert_eq!(done["client"]["tokens"], 2);
}

#[test]
fn chat_json_refused_verification_exits_3_naming_the_check() {
    let image = TestImage::standard();
    // The manifest of another model: the appliance measured this image's model, not that one.
    let other = TestImage::new(0, b"GGUF another model", &image.cmdline);
    let manifest_path = image.dir.path().join("other-manifest.json");
    other.manifest().write(&manifest_path).unwrap();
    let never = client::loopback::Reply::Respond(Response::Error(ErrorCode::BadRequest));
    let (address, server) = serve_chat(SimAppliance::boot(home(), &image, true), never);
    let (code, lines, stderr) = chat_json(address, &manifest_path);
    server.join().unwrap();
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("verification failed [manifest]"),
        "{stderr}"
    );
    assert_eq!(lines.len(), 1, "only the error line: {lines:?}");
    assert_eq!(lines[0]["event"], "error");
    assert_eq!(lines[0]["kind"], "verification_refused");
    assert_eq!(lines[0]["check"], "manifest");
    assert_eq!(lines[0]["exit_code"], 3);
    for text in [&stderr, &lines[0]["error"].to_string()] {
        assert!(!text.contains("Some("), "{text}");
    }
}

#[test]
fn chat_json_refused_request_exits_4_naming_the_code() {
    let image = TestImage::standard();
    let manifest_path = image.dir.path().join("manifest.json");
    image.manifest().write(&manifest_path).unwrap();
    let busy = client::loopback::Reply::Respond(Response::Error(ErrorCode::Busy));
    let (address, server) = serve_chat(SimAppliance::boot(home(), &image, true), busy);
    let (code, lines, stderr) = chat_json(address, &manifest_path);
    server.join().unwrap();
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("the appliance is busy"), "{stderr}");
    assert!(stderr.contains("(appliance error: busy)"), "{stderr}");
    let events: Vec<&str> = lines
        .iter()
        .map(|line| line["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["verification", "error"], "{lines:?}");
    assert_eq!(lines[1]["kind"], "appliance_refused");
    assert_eq!(lines[1]["code"], "busy");
    assert_eq!(lines[1]["exit_code"], 4);
}
