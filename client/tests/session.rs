//! The client's TLS session against net's TLS server (the code the appliance runs), in process over 127.0.0.1
//! (`client::loopback`): the channel binding the client computes equals the server's; a quote bound to another
//! session (another exporter) or relayed from another appliance instance (another key) fails the extraData
//! check, in the offline check and through `UnverifiedSession::verify`; and a failed verification sends
//! nothing after the attestation request (docs/ARCHITECTURE.md §4).
//!
//! The quotes here are made in software: a P-256 key stands in for the TPM's AK and signs a TPMS_ATTEST laid
//! out as TCG TPM 2.0 Part 2 §10.12.12 says. They pass every check up to and including extraData, then fail on
//! the missing event log, so the check a test ends at shows whether the binding held.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::loopback::{Loopback, Reply};
use client::manifest::{KernelMeasurement, Manifest, ModelMeasurement, Sha256Digest};
use client::session::{AttestationRequest, RequestKind, UnverifiedSession};
use client::verify::{checks, Field, TrustAnchors, VerifyError, VerifyOptions};
use net::proto::{qualifying_data, ChannelBinding, Evidence, Request, Response};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use rand::rngs::OsRng;
use sha2::{Digest as _, Sha256};
use tpm::attest::QuoteInfo;
use tpm::commands::{PcrSelection, PCR_COUNT};
use tpm::public::PublicArea;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A software attestation key and the TPMT_PUBLIC describing it (Part 2 §12.2.4: ECC, SHA-256 name, attributes
/// fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|restricted|sign, no policy, ECDSA-SHA256 on P-256).
struct SoftwareAk {
    key: SigningKey,
    public: Vec<u8>,
}

impl SoftwareAk {
    fn new() -> Self {
        let key = SigningKey::random(&mut OsRng);
        let point = key.verifying_key().to_encoded_point(false);
        let mut public = Vec::new();
        public.extend_from_slice(&0x0023u16.to_be_bytes()); // TPM_ALG_ECC
        public.extend_from_slice(&0x000bu16.to_be_bytes()); // nameAlg SHA-256
        public.extend_from_slice(&0x0005_0072u32.to_be_bytes()); // objectAttributes
        public.extend_from_slice(&0u16.to_be_bytes()); // authPolicy: empty
        public.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric: TPM_ALG_NULL
        public.extend_from_slice(&0x0018u16.to_be_bytes()); // scheme: ECDSA
        public.extend_from_slice(&0x000bu16.to_be_bytes()); // with SHA-256
        public.extend_from_slice(&0x0003u16.to_be_bytes()); // TPM_ECC_NIST_P256
        public.extend_from_slice(&0x0010u16.to_be_bytes()); // kdf: TPM_ALG_NULL
        for coordinate in [point.x().unwrap(), point.y().unwrap()] {
            public.extend_from_slice(&32u16.to_be_bytes());
            public.extend_from_slice(coordinate);
        }
        Self { key, public }
    }

    /// Evidence whose quote carries `extra_data` over `pcr_mask` (all PCR values 0x11..), with no event log.
    fn evidence(&self, extra_data: &[u8], pcr_mask: u32) -> Evidence {
        let area = PublicArea::from_bytes(&self.public).unwrap();
        let selection = PcrSelection::from_mask(pcr_mask).unwrap();
        let pcr_values: Vec<[u8; 32]> = selection.indices().map(|_| [0x11; 32]).collect();
        let mut values = [[0u8; 32]; PCR_COUNT];
        for (pcr, value) in selection.indices().zip(&pcr_values) {
            values[usize::from(pcr)] = *value;
        }
        let signer = checks::ak_qualified_name(&area);
        let mut attest = Vec::new();
        attest.extend_from_slice(&0xff54_4347u32.to_be_bytes()); // TPM_GENERATED_VALUE
        attest.extend_from_slice(&0x8018u16.to_be_bytes()); // TPM_ST_ATTEST_QUOTE
        attest.extend_from_slice(&(signer.len() as u16).to_be_bytes());
        attest.extend_from_slice(&signer);
        attest.extend_from_slice(&(extra_data.len() as u16).to_be_bytes());
        attest.extend_from_slice(extra_data);
        attest.extend_from_slice(&1234u64.to_be_bytes()); // clock
        attest.extend_from_slice(&1u32.to_be_bytes()); // resetCount
        attest.extend_from_slice(&0u32.to_be_bytes()); // restartCount
        attest.push(1); // safe
        attest.extend_from_slice(&0u64.to_be_bytes()); // firmwareVersion
        attest.extend_from_slice(&1u32.to_be_bytes()); // one TPMS_PCR_SELECTION
        attest.extend_from_slice(&0x000bu16.to_be_bytes());
        attest.push(3);
        attest.extend_from_slice(&pcr_mask.to_le_bytes()[..3]);
        attest.extend_from_slice(&32u16.to_be_bytes());
        attest.extend_from_slice(&tpm::attest::pcr_digest(&values, selection));
        let signature: Signature = self.key.sign(&attest);
        let (r, s) = signature.split_bytes();
        let mut signature = Vec::new();
        signature.extend_from_slice(&0x0018u16.to_be_bytes());
        signature.extend_from_slice(&0x000bu16.to_be_bytes());
        for scalar in [r, s] {
            signature.extend_from_slice(&32u16.to_be_bytes());
            signature.extend_from_slice(&scalar);
        }
        Evidence {
            attest,
            signature,
            ak_public: self.public.clone(),
            ek_public: Vec::new(),
            ek_certificate: Vec::new(),
            pcr_values,
            event_log: Vec::new(),
            firmware_log: Vec::new(),
        }
    }
}

fn manifest() -> Manifest {
    Manifest::from_digests(
        KernelMeasurement {
            file_sha256: Sha256Digest([1; 32]),
            file_length: 4096,
            measured_sha256: Sha256Digest([2; 32]),
            segments: Vec::new(),
        },
        ModelMeasurement {
            sha256: Sha256Digest([3; 32]),
            length: 5,
        },
        "ip=dhcp port=7000",
    )
    .unwrap()
}

/// Trust anchors that the software evidence never reaches (it fails before the EK checks): any self-signed
/// certificate, here one of net's TLS identities.
fn some_trust() -> TrustAnchors {
    use x509_cert::der::Decode as _;
    fn fill(buffer: &mut [u8]) -> bool {
        rand::RngCore::try_fill_bytes(&mut OsRng, buffer).is_ok()
    }
    let identity = net::tls::ServerIdentity::generate(&net::tls::RandomFn(fill)).unwrap();
    let root = x509_cert::Certificate::from_der(identity.certificate_der()).unwrap();
    TrustAnchors::new(root, Vec::new())
}

/// An appliance stand-in that answers Attest with software evidence bound to `binding_for(session binding)`.
fn attesting_loopback(
    connections: usize,
    ak: Arc<SoftwareAk>,
    binding_for: impl Fn(&ChannelBinding) -> ChannelBinding + Send + 'static,
) -> Loopback {
    Loopback::start(connections, move |request, binding| match request {
        Request::Attest { nonce, pcr_mask } => {
            let qualifying = qualifying_data(nonce, &binding_for(binding));
            Reply::Respond(Response::Evidence(ak.evidence(&qualifying, *pcr_mask)))
        }
        _ => Reply::Respond(Response::Error(net::proto::ErrorCode::BadRequest)),
    })
    .unwrap()
}

fn quote_with(extra_data: &[u8]) -> QuoteInfo<'_> {
    QuoteInfo {
        qualified_signer: &[],
        extra_data,
        clock: 0,
        reset_count: 0,
        restart_count: 0,
        safe: true,
        firmware_version: 0,
        selection: PcrSelection::from_mask(0x1000).unwrap(),
        pcr_digest: [0; 32],
    }
}

#[test]
fn the_clients_binding_is_the_servers() {
    let server = Loopback::start(2, |_, _| {
        Reply::Respond(Response::ModelInfo(net::proto::ModelInfo {
            length: 1,
            sha256: [0; 32],
        }))
    })
    .unwrap();
    let mut first = UnverifiedSession::connect(server.address(), TIMEOUT).unwrap();
    first.model_info().unwrap();
    let mut second = UnverifiedSession::connect(server.address(), TIMEOUT).unwrap();
    second.model_info().unwrap();
    let spki_sha256: [u8; 32] = Sha256::digest(first.server_spki()).into();
    assert_eq!(spki_sha256, server.spki_sha256());
    let (first_binding, second_binding) = (first.binding(), second.binding());
    drop(first);
    drop(second);
    let served = server.join().unwrap();
    assert!(served.failures.is_empty(), "{:?}", served.failures);
    assert_eq!(served.bindings, [first_binding, second_binding]);
    // One appliance key, two sessions: same SPKI, different exporters.
    assert_eq!(first_binding.spki_sha256, second_binding.spki_sha256);
    assert_ne!(first_binding.exporter, second_binding.exporter);
}

#[test]
fn extra_data_accepts_only_this_session_of_this_appliance() {
    let ak = Arc::new(SoftwareAk::new());
    let appliance = attesting_loopback(2, Arc::clone(&ak), |binding| *binding);
    let other_instance = attesting_loopback(1, ak, |binding| *binding);
    let this = UnverifiedSession::connect(appliance.address(), TIMEOUT).unwrap();
    let earlier = UnverifiedSession::connect(appliance.address(), TIMEOUT).unwrap();
    let relayed = UnverifiedSession::connect(other_instance.address(), TIMEOUT).unwrap();
    let nonce = [0x42; 32];
    let made_for_this = qualifying_data(&nonce, &this.binding());
    assert_eq!(
        checks::check_extra_data(&quote_with(&made_for_this), &nonce, &this.binding()),
        Ok(())
    );
    for (other, what) in [
        (&earlier, "another session"),
        (&relayed, "another appliance"),
    ] {
        let made_for_other = qualifying_data(&nonce, &other.binding());
        assert_eq!(
            checks::check_extra_data(&quote_with(&made_for_other), &nonce, &this.binding()),
            Err(VerifyError::ExtraDataMismatch),
            "a quote made for {what}"
        );
    }
    // Another nonce on the right session fails too.
    assert_eq!(
        checks::check_extra_data(&quote_with(&made_for_this), &[0x43; 32], &this.binding()),
        Err(VerifyError::ExtraDataMismatch)
    );
}

/// Verifies against `endpoint` and returns the error and the kinds of requests the client sent.
fn verify_failure(endpoint: std::net::SocketAddr) -> (anyhow::Error, Vec<RequestKind>) {
    let session = UnverifiedSession::connect(endpoint, TIMEOUT).unwrap();
    let transcript = session.transcript();
    let options = VerifyOptions {
        timeout: TIMEOUT,
        // The manifest is a direct one: opt in, so the checks run on to the ones these tests are about.
        trust_host: true,
        ..VerifyOptions::default()
    };
    let Err(error) = session.verify(&manifest(), &some_trust(), &options) else {
        panic!("software evidence without an event log verified");
    };
    (error, transcript.kinds())
}

#[test]
fn a_quote_bound_to_this_session_passes_extra_data() {
    let appliance = attesting_loopback(1, Arc::new(SoftwareAk::new()), |binding| *binding);
    let (error, sent) = verify_failure(appliance.address());
    // It got past extraData (and everything before it) and stopped at the missing event log.
    assert_eq!(
        error.downcast_ref::<VerifyError>(),
        Some(&VerifyError::Truncated(Field::EventLog)),
        "{error:#}"
    );
    assert_eq!(sent, [RequestKind::Attest]);
    appliance.join().unwrap();
}

#[test]
fn a_quote_replayed_from_an_earlier_session_fails_extra_data() {
    // The stand-in answers every session with a quote bound to the first session it saw.
    let first: Arc<Mutex<Option<ChannelBinding>>> = Arc::default();
    let appliance = attesting_loopback(2, Arc::new(SoftwareAk::new()), move |binding| {
        *first.lock().unwrap().get_or_insert(*binding)
    });
    let (error, _) = verify_failure(appliance.address());
    assert_eq!(
        error.downcast_ref::<VerifyError>(),
        Some(&VerifyError::Truncated(Field::EventLog)),
        "the first session is the one the quote was made for: {error:#}"
    );
    let (error, sent) = verify_failure(appliance.address());
    assert_eq!(
        error.downcast_ref::<VerifyError>(),
        Some(&VerifyError::ExtraDataMismatch),
        "{error:#}"
    );
    assert!(error.to_string().contains("[extraData"), "{error}");
    // Nothing went out after the attestation request: no credential challenge, no prompt.
    assert_eq!(sent, [RequestKind::Attest]);
    appliance.join().unwrap();
}

#[test]
fn evidence_relayed_from_another_instance_fails_extra_data() {
    // The genuine appliance quotes whatever nonce it gets, bound to the session it gets it on.
    let genuine = attesting_loopback(1, Arc::new(SoftwareAk::new()), |binding| *binding);
    let genuine_address = genuine.address();
    // A relay with its own TLS key forwards the client's attest request to the genuine appliance over its own
    // session and hands the answer back unchanged.
    let relay = Loopback::start(1, move |request, _| match request {
        Request::Attest { nonce, pcr_mask } => {
            let mut upstream = UnverifiedSession::connect(genuine_address, TIMEOUT).unwrap();
            let answer = upstream
                .exchange(AttestationRequest::Attest {
                    nonce: *nonce,
                    pcr_mask: *pcr_mask,
                })
                .unwrap();
            Reply::Respond(answer)
        }
        _ => Reply::Close,
    })
    .unwrap();
    let (error, sent) = verify_failure(relay.address());
    assert_eq!(
        error.downcast_ref::<VerifyError>(),
        Some(&VerifyError::ExtraDataMismatch),
        "{error:#}"
    );
    assert_eq!(sent, [RequestKind::Attest]);
    relay.join().unwrap();
    let served = genuine.join().unwrap();
    assert_eq!(
        served.requests.len(),
        1,
        "the relay did forward the request"
    );
}

#[test]
fn verification_reports_show_the_binding_when_exported() {
    // The export (written before the checks) records the nonce and binding the qualifying data covers.
    let appliance = attesting_loopback(1, Arc::new(SoftwareAk::new()), |binding| *binding);
    let session = UnverifiedSession::connect(appliance.address(), TIMEOUT).unwrap();
    let binding = session.binding();
    let dir = tempfile::tempdir().unwrap();
    let options = VerifyOptions {
        timeout: TIMEOUT,
        export_evidence: Some(dir.path().join("evidence")),
        ..VerifyOptions::default()
    };
    assert!(session
        .verify(&manifest(), &some_trust(), &options)
        .is_err());
    let text = std::fs::read_to_string(dir.path().join("evidence/binding.txt")).unwrap();
    assert!(text.contains(&client::hex(&binding.spki_sha256)), "{text}");
    assert!(text.contains(&client::hex(&binding.exporter)), "{text}");
    appliance.join().unwrap();
}
