//! The TIS driver end to end: `tis::Tis` over the TIS register model, whose TPM behind the FIFO is a real swtpm.
//! This is the path the kernel takes (MMIO registers in front of a TPM), with real TPM responses.

mod support;

use p256::ecdsa::signature::Verifier;
use rand::SeedableRng;
use support::Swtpm;
use tpm::commands::{self, PcrSelection, StartupOutcome};
use tpm::credential::make_credential;
use tpm::eventlog::{self, EventKind, EventLog};
use tpm::public::{KeyTemplate, PublicKey};
use tpm::tis::model::{FakeClock, FakeTis};
use tpm::tis::{Timeouts, Tis};
use tpm::transport::Transport;

fn model_over(swtpm: &Swtpm, burst: u32) -> FakeTis {
    let mut socket = swtpm.connect();
    let mut model = FakeTis::new(move |command| {
        let mut response = vec![0u8; commands::BUFFER_SIZE];
        let size = socket
            .transact(command, &mut response)
            .expect("swtpm behind the model");
        response.truncate(size);
        response
    });
    model.burst = burst;
    model
}

#[test]
fn every_step_of_attestation_through_tis() {
    let swtpm = Swtpm::start();
    // One log across both rounds: both extend the same swtpm's PCR 12.
    let mut log = EventLog::new();
    for burst in [4096, 61] {
        let mut model = model_over(&swtpm, burst);
        let mut clock = FakeClock::default();
        let mut tpm = Tis::new(&mut model, &mut clock, Timeouts::PTP);
        assert_eq!(tpm.probe().unwrap().did_vid, 0x0001_1014);
        assert_eq!(
            commands::startup(&mut tpm).unwrap(),
            StartupOutcome::AlreadyStarted
        );
        let mut seed = [0u8; 48];
        commands::get_random(&mut tpm, &mut seed).unwrap();

        let digest = eventlog::sha256(&[burst as u8; 10]);
        eventlog::measure(
            &mut tpm,
            &mut log,
            12,
            EventKind::KernelImage,
            digest,
            "kernel",
        )
        .unwrap();

        let ek = commands::create_primary(&mut tpm, KeyTemplate::EkRsa2048).unwrap();
        let ak = commands::create_primary(&mut tpm, KeyTemplate::AkEccP256).unwrap();
        let mut certificate = [0u8; 2048];
        let length = commands::read_ek_certificate(&mut tpm, &mut certificate).unwrap();
        assert!(length > 512);
        let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(burst));
        let made = make_credential(&ek.public, &ak.name, b"through the FIFO", &mut rng).unwrap();
        let (blob, secret) = (made.credential_blob, made.secret);
        let recovered = commands::activate_credential_with_ek(
            &mut tpm, ak.handle, ek.handle, &[9; 32], &blob, &secret,
        )
        .unwrap();
        assert_eq!(recovered.as_bytes(), b"through the FIFO");

        let selection = PcrSelection::from_indices(&[12]).unwrap();
        let quote = commands::quote(&mut tpm, ak.handle, &[1; 32], selection).unwrap();
        let PublicKey::Ecc { x, y, .. } = ak.public.info().unwrap().key else {
            panic!("AK is not ECC");
        };
        let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
        let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point).unwrap();
        let signature = p256::ecdsa::Signature::from_scalars(quote.r, quote.s).unwrap();
        key.verify(quote.attest(), &signature).unwrap();

        let values = commands::pcr_read(&mut tpm, selection).unwrap();
        assert_eq!(values.get(12), Some(&log.replay()[12]));
        commands::flush_context(&mut tpm, ak.handle).unwrap();
        commands::flush_context(&mut tpm, ek.handle).unwrap();
        let _ = tpm.into_parts();
        assert!(
            !model.locality_active,
            "locality released after each command"
        );
    }
}

#[test]
fn a_response_cut_short_once_is_read_again_with_response_retry() {
    let swtpm = Swtpm::start();
    let mut model = model_over(&swtpm, 4096);
    model.lies.truncate_to = Some(40);
    model.lies.truncate_times = 1;
    let mut clock = FakeClock::default();
    let mut tpm = Tis::new(&mut model, &mut clock, Timeouts::PTP);
    let ak = commands::create_primary(&mut tpm, KeyTemplate::AkEccP256).unwrap();
    commands::flush_context(&mut tpm, ak.handle).unwrap();
    let _ = tpm.into_parts();
    assert_eq!(model.response_retries, 1);
}
