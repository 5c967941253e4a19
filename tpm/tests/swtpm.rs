//! Every command of `tpm::commands` against a real swtpm that each test starts itself (docs/ARCHITECTURE.md §3), plus
//! MakeCredential/ActivateCredential and a quote verified with the `p256` crate.
//!
//! These tests fail, not skip, when swtpm is missing: the message names the Debian packages.

mod support;

use p256::ecdsa::signature::Verifier;
use rand::SeedableRng;
use sha2_10::Digest;
use support::{Recording, Replay, Swtpm};
use tpm::attest::{self, EcdsaSignature, QuoteInfo};
use tpm::commands::{self, CommandCode, Error, Malformed, PcrSelection, StartupOutcome};
use tpm::credential::make_credential;
use tpm::eventlog::{self, EventKind, EventLog};
use tpm::public::{self, KeyTemplate, PublicKey, AK_ATTRIBUTES, EK_ATTRIBUTES, TPM_ECC_NIST_P256};
use tpm::rc::{Location, ResponseCode};
use tpm::transport::Transport;

#[test]
fn startup_after_startup_clear_is_already_started() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.connect();
    assert_eq!(
        commands::startup(&mut tpm).unwrap(),
        StartupOutcome::AlreadyStarted
    );
}

#[test]
fn startup_after_control_init() {
    let swtpm = Swtpm::start_with_flags("not-need-init");
    let mut tpm = swtpm.connect();
    // Before Startup every command answers TPM_RC_INITIALIZE (0x100).
    let mut buffer = [0u8; 8];
    let error = commands::get_random(&mut tpm, &mut buffer).unwrap_err();
    assert!(
        matches!(error, Error::Tpm { command: CommandCode::GetRandom, code } if code.raw() == 0x100),
        "{error:?}"
    );
    assert_eq!(
        commands::startup(&mut tpm).unwrap(),
        StartupOutcome::Started
    );
    commands::get_random(&mut tpm, &mut buffer).unwrap();
    // A control-channel INIT is a power cycle: Startup is needed (and accepted) again. swtpm serves one data
    // connection at a time, so the old one is closed first.
    drop(tpm);
    assert_eq!(swtpm.control().init().unwrap(), 0);
    let mut tpm = swtpm.connect();
    assert_eq!(
        commands::startup(&mut tpm).unwrap(),
        StartupOutcome::Started
    );
    assert_eq!(
        commands::startup(&mut tpm).unwrap(),
        StartupOutcome::AlreadyStarted
    );
}

#[test]
fn get_random_fills_any_length() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.connect();
    let mut first = [0u8; 100];
    let mut second = [0u8; 100];
    commands::get_random(&mut tpm, &mut first).unwrap();
    commands::get_random(&mut tpm, &mut second).unwrap();
    assert_ne!(first, second);
    assert!(
        first[64..].iter().any(|&b| b != 0),
        "the tail past the first chunks is filled"
    );
    commands::get_random(&mut tpm, &mut []).unwrap();
}

#[test]
fn pcr_extend_read_and_event_log_replay() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.connect();
    let all = PcrSelection::from_mask(0x00ff_ffff).unwrap();
    let before = commands::pcr_read(&mut tpm, all).unwrap();
    for pcr in [12u8, 13, 14] {
        assert_eq!(
            before.get(pcr),
            Some(&[0u8; 32]),
            "PCR {pcr} starts at zero"
        );
    }
    // PCR 17-22 (DRTM) start at all ones on a PC Client TPM: the read really reaches past the first 8.
    assert_eq!(before.get(17), Some(&[0xffu8; 32]));

    let mut log = EventLog::new();
    let kernel = eventlog::sha256(b"kernel image");
    let model = eventlog::sha256(b"model blob");
    let params = eventlog::sha256(b"temperature=0.7");
    let config = eventlog::sha256(b"port=8443");
    eventlog::measure(
        &mut tpm,
        &mut log,
        12,
        EventKind::KernelImage,
        kernel,
        "kernel",
    )
    .unwrap();
    eventlog::measure(&mut tpm, &mut log, 13, EventKind::Model, model, "model").unwrap();
    eventlog::measure(
        &mut tpm,
        &mut log,
        13,
        EventKind::ServingParameters,
        params,
        "params",
    )
    .unwrap();
    eventlog::measure(
        &mut tpm,
        &mut log,
        14,
        EventKind::Configuration,
        config,
        "config",
    )
    .unwrap();

    let selection = PcrSelection::from_indices(&[12, 13, 14]).unwrap();
    let after = commands::pcr_read(&mut tpm, selection).unwrap();
    assert_eq!(after.selection, selection);
    assert!(after.update_counter > before.update_counter);
    let replayed = log.replay();
    for pcr in [12u8, 13, 14] {
        assert_eq!(
            after.get(pcr),
            Some(&replayed[usize::from(pcr)]),
            "PCR {pcr}"
        );
    }
    assert_eq!(after.get(0), None);

    // The serialised log replays the same way.
    let mut bytes = vec![0u8; log.buffer_len()];
    log.emit(&mut bytes).unwrap();
    assert_eq!(EventLog::parse(&bytes).unwrap().replay(), replayed);

    assert_eq!(
        commands::pcr_extend(&mut tpm, 24, &[0; 32]),
        Err(Error::BadArgument {
            command: CommandCode::PcrExtend
        })
    );
}

#[test]
fn ek_matches_the_persisted_ek_and_its_certificate() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.connect();
    let ek = commands::create_primary(&mut tpm, KeyTemplate::EkRsa2048).unwrap();
    let info = ek.public.info().unwrap();
    assert_eq!(info.attributes, EK_ATTRIBUTES);
    let PublicKey::Rsa {
        modulus,
        modulus_len,
        ..
    } = info.key
    else {
        panic!("EK is not RSA: {info:?}");
    };
    assert_eq!(modulus_len, 256);

    // swtpm_setup persisted the EK it certified at 0x81010001; the template must reproduce it (docs/ARCHITECTURE.md §3).
    let persisted = commands::read_public(&mut tpm, 0x8101_0001).unwrap();
    assert_eq!(persisted.public, ek.public);
    assert_eq!(persisted.name, ek.name);
    let from_handle = commands::read_public(&mut tpm, ek.handle).unwrap();
    assert_eq!(from_handle.name, ek.name);

    let nv = commands::nv_read_public(&mut tpm, commands::EK_CERT_RSA2048_NV_INDEX).unwrap();
    assert!(
        nv.data_size > 512,
        "certificate needs several NV_Read chunks"
    );
    let mut certificate = vec![0u8; 4096];
    let length = commands::read_ek_certificate(&mut tpm, &mut certificate).unwrap();
    certificate.truncate(length);
    assert_eq!(length, usize::from(nv.data_size));
    // DER SEQUENCE whose length covers the whole buffer.
    assert_eq!(certificate[0], 0x30);
    assert_eq!(certificate[1], 0x82);
    assert_eq!(
        usize::from(u16::from_be_bytes([certificate[2], certificate[3]])) + 4,
        length
    );
    // Owner authorization reads the same bytes (what a vTPM without TPMA_NV_AUTHREAD needs).
    let mut head = [0u8; 16];
    commands::nv_read(
        &mut tpm,
        commands::TPM_RH_OWNER,
        commands::EK_CERT_RSA2048_NV_INDEX,
        0,
        &mut head,
    )
    .unwrap();
    assert_eq!(&head, &certificate[..16]);
    // The certified key is the EK: its modulus appears in the certificate.
    let modulus = &modulus[..256];
    assert!(certificate.windows(256).any(|window| window == modulus));

    // And the certificate chains to the test's CA (openssl, an implementation nobody here wrote).
    let ca = &support::provisioned().ca;
    let dir = support::TempDir::new("cert");
    let der = dir.0.join("ek.der");
    let pem = dir.0.join("ek.pem");
    std::fs::write(&der, &certificate).unwrap();
    let converted = std::process::Command::new("openssl")
        .args(["x509", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem)
        .status()
        .expect("openssl");
    assert!(converted.success());
    let verified = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca.join("swtpm-localca-rootca-cert.pem"))
        .arg("-untrusted")
        .arg(ca.join("issuercert.pem"))
        .arg(&pem)
        .output()
        .expect("openssl");
    assert!(
        verified.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );

    commands::flush_context(&mut tpm, ek.handle).unwrap();
}

#[test]
fn ak_is_a_restricted_p256_signing_key() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.connect();
    let ak = commands::create_primary(&mut tpm, KeyTemplate::AkEccP256).unwrap();
    let info = ak.public.info().unwrap();
    assert_eq!(info.object_type, public::TPM_ALG_ECC);
    assert_eq!(info.attributes, AK_ATTRIBUTES);
    assert_eq!(info.scheme, (public::TPM_ALG_ECDSA, public::TPM_ALG_SHA256));
    assert!(matches!(
        info.key,
        PublicKey::Ecc {
            curve: TPM_ECC_NIST_P256,
            ..
        }
    ));
    // Primary keys are derived from the hierarchy seed: the same template gives the same key.
    let again = commands::create_primary(&mut tpm, KeyTemplate::AkEccP256).unwrap();
    assert_eq!(again.public, ak.public);
    assert_ne!(again.handle, ak.handle);
    commands::flush_context(&mut tpm, again.handle).unwrap();
    commands::flush_context(&mut tpm, ak.handle).unwrap();
}

#[test]
fn activate_credential_round_trip() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.connect();
    let ek = commands::create_primary(&mut tpm, KeyTemplate::EkRsa2048).unwrap();
    let ak = commands::create_primary(&mut tpm, KeyTemplate::AkEccP256).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let secret = b"cloister activation secret 32 b!";
    let made = make_credential(&ek.public, &ak.name, secret, &mut rng).unwrap();
    let (blob, encrypted_seed) = (made.credential_blob, made.secret);
    let nonce = [0x5a; 32];
    let recovered = commands::activate_credential_with_ek(
        &mut tpm,
        ak.handle,
        ek.handle,
        &nonce,
        &blob,
        &encrypted_seed,
    )
    .unwrap();
    assert_eq!(recovered.as_bytes(), secret);

    // A credential made for another name (a foreign AK) fails the TPM's integrity check, and the helper
    // flushes its policy session, so sessions do not leak over repeated failures.
    let made = make_credential(&ek.public, &ek.name, secret, &mut rng).unwrap();
    let (foreign_blob, foreign_seed) = (made.credential_blob, made.secret);
    for _ in 0..5 {
        let error = commands::activate_credential_with_ek(
            &mut tpm,
            ak.handle,
            ek.handle,
            &nonce,
            &foreign_blob,
            &foreign_seed,
        )
        .unwrap_err();
        assert!(
            matches!(error, Error::Tpm { command: CommandCode::ActivateCredential, code } if code.base() == 0x09F),
            "expected TPM_RC_INTEGRITY, got {error:?}"
        );
    }
    // Without the policy session's PolicySecret the EK refuses (its policy is not satisfied).
    let session = commands::start_auth_session(&mut tpm, &nonce).unwrap();
    let error = commands::activate_credential(
        &mut tpm,
        ak.handle,
        ek.handle,
        session,
        &blob,
        &encrypted_seed,
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Tpm {
                command: CommandCode::ActivateCredential,
                code: ResponseCode::FormatOne { .. }
            }
        ),
        "{error:?}"
    );
    commands::flush_context(&mut tpm, session).unwrap();
    commands::flush_context(&mut tpm, ak.handle).unwrap();
    commands::flush_context(&mut tpm, ek.handle).unwrap();
}

#[test]
fn quote_verifies_with_p256() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.connect();
    let ak = commands::create_primary(&mut tpm, KeyTemplate::AkEccP256).unwrap();
    commands::pcr_extend(&mut tpm, 12, &eventlog::sha256(b"kernel")).unwrap();
    let selection = PcrSelection::from_indices(&[0, 12, 13, 14]).unwrap();
    let extra_data = sha2_10::Sha256::digest(b"nonce and channel binding");
    let quote = commands::quote(&mut tpm, ak.handle, &extra_data, selection).unwrap();

    let PublicKey::Ecc { x, y, .. } = ak.public.info().unwrap().key else {
        panic!("AK is not ECC");
    };
    let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point).unwrap();
    let signature = p256::ecdsa::Signature::from_scalars(quote.r, quote.s).unwrap();
    key.verify(quote.attest(), &signature)
        .expect("quote signature verifies");
    let mut flipped = quote.attest().to_vec();
    flipped[20] ^= 1;
    assert!(key.verify(&flipped, &signature).is_err());

    // TPMS_ATTEST as the verifier reads it: extraData, selection, and pcrDigest over the values read.
    let info = QuoteInfo::parse(quote.attest()).unwrap();
    assert_eq!(info.extra_data, extra_data.as_slice());
    assert_eq!(info.selection, selection);
    assert!(info.safe);
    let values = commands::pcr_read(&mut tpm, selection).unwrap();
    assert_eq!(
        info.pcr_digest,
        attest::pcr_digest(&values.values, selection)
    );
    let mut hasher = sha2_10::Sha256::new();
    for pcr in selection.indices() {
        hasher.update(values.get(pcr).unwrap());
    }
    assert_eq!(info.pcr_digest.as_slice(), hasher.finalize().as_slice());
    // qualifiedSigner of a primary key in the endorsement hierarchy: its name under that hierarchy.
    assert_eq!(info.qualified_signer.len(), 34);
    // TPMT_SIGNATURE: ECDSA, SHA-256, and the same r, s.
    let parsed = EcdsaSignature::parse(quote.signature()).unwrap();
    assert_eq!(
        (parsed.hash, parsed.r, parsed.s),
        (0x000B, quote.r, quote.s)
    );

    assert_eq!(
        commands::quote(&mut tpm, ak.handle, &[0; 65], selection).unwrap_err(),
        Error::BadArgument {
            command: CommandCode::Quote
        }
    );
    commands::flush_context(&mut tpm, ak.handle).unwrap();
}

#[test]
fn response_codes_name_the_command_and_the_handle() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.connect();
    let ak = commands::create_primary(&mut tpm, KeyTemplate::AkEccP256).unwrap();
    commands::flush_context(&mut tpm, ak.handle).unwrap();
    // The flushed handle is gone: the warning TPM_RC_REFERENCE_H0 (format zero, S set).
    let error = commands::read_public(&mut tpm, ak.handle).unwrap_err();
    let Error::Tpm {
        command: CommandCode::ReadPublic,
        code: code @ ResponseCode::FormatZero { warning: true, .. },
    } = error
    else {
        panic!("{error:?}");
    };
    assert_eq!(code.name(), "TPM_RC_REFERENCE_H0");
    // A handle of the wrong type for the command is a format-one code naming handle 1.
    let error = commands::read_public(&mut tpm, commands::TPM_RH_ENDORSEMENT).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Tpm {
                command: CommandCode::ReadPublic,
                code: ResponseCode::FormatOne {
                    location: Location::Handle(1),
                    ..
                }
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        commands::flush_context(&mut tpm, ak.handle)
            .unwrap_err()
            .command(),
        CommandCode::FlushContext
    );
    let error = commands::nv_read_public(&mut tpm, 0x01C0_FFF0).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Tpm {
                command: CommandCode::NvReadPublic,
                ..
            }
        ),
        "{error:?}"
    );
    // NV_Read beyond the certificate's end: the TPM refuses (TPM_RC_NV_RANGE).
    let nv = commands::nv_read_public(&mut tpm, commands::EK_CERT_RSA2048_NV_INDEX).unwrap();
    let mut past_end = [0u8; 16];
    let error = commands::nv_read(
        &mut tpm,
        commands::TPM_RH_OWNER,
        commands::EK_CERT_RSA2048_NV_INDEX,
        nv.data_size,
        &mut past_end,
    )
    .unwrap_err();
    assert!(
        matches!(error, Error::Tpm { command: CommandCode::NvRead, code } if code.base() == 0x146),
        "{error:?}"
    );
}

/// Runs every command once against swtpm through a recorder; returns the exchanges and the handles used.
/// (command, response) pairs.
type Exchanges = Vec<(Vec<u8>, Vec<u8>)>;

fn record_session(swtpm: &Swtpm) -> (Exchanges, u32, u32) {
    let mut tpm = Recording {
        inner: swtpm.connect(),
        exchanges: Vec::new(),
    };
    commands::startup(&mut tpm).unwrap();
    commands::get_random(&mut tpm, &mut [0u8; 16]).unwrap();
    commands::pcr_extend(&mut tpm, 12, &[1; 32]).unwrap();
    commands::pcr_read(&mut tpm, PcrSelection::from_indices(&[12, 13]).unwrap()).unwrap();
    let ek = commands::create_primary(&mut tpm, KeyTemplate::EkRsa2048).unwrap();
    let ak = commands::create_primary(&mut tpm, KeyTemplate::AkEccP256).unwrap();
    commands::read_public(&mut tpm, ak.handle).unwrap();
    commands::nv_read_public(&mut tpm, commands::EK_CERT_RSA2048_NV_INDEX).unwrap();
    commands::nv_read(
        &mut tpm,
        commands::EK_CERT_RSA2048_NV_INDEX,
        commands::EK_CERT_RSA2048_NV_INDEX,
        0,
        &mut [0u8; 100],
    )
    .unwrap();
    let session = commands::start_auth_session(&mut tpm, &[1; 32]).unwrap();
    commands::policy_secret(&mut tpm, commands::TPM_RH_ENDORSEMENT, session).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let made = make_credential(&ek.public, &ak.name, &[7; 16], &mut rng).unwrap();
    let (blob, seed) = (made.credential_blob, made.secret);
    commands::activate_credential(&mut tpm, ak.handle, ek.handle, session, &blob, &seed).unwrap();
    commands::quote(
        &mut tpm,
        ak.handle,
        &[3; 32],
        PcrSelection::from_indices(&[12]).unwrap(),
    )
    .unwrap();
    commands::flush_context(&mut tpm, ek.handle).unwrap();
    // Drop the TPM_RC_RETRY answers swtpm sometimes gives (the command was sent again).
    let exchanges = tpm
        .exchanges
        .into_iter()
        .filter(|(_, response)| response[6..10] != [0, 0, 0x09, 0x22])
        .collect();
    (exchanges, ak.handle, ek.handle)
}

/// Feeds `response` to the command whose code is in `command`'s header; must return, never panic.
fn replay(command: &[u8], response: Vec<u8>, ak: u32, ek: u32) -> Result<(), Error> {
    let code = u32::from_be_bytes(command[6..10].try_into().unwrap());
    let mut tpm = Replay {
        response: Some(response),
    };
    match code {
        0x144 => commands::startup(&mut tpm).map(drop),
        0x17B => commands::get_random(&mut tpm, &mut [0u8; 16]),
        0x182 => commands::pcr_extend(&mut tpm, 12, &[1; 32]),
        0x17E => {
            commands::pcr_read(&mut tpm, PcrSelection::from_indices(&[12, 13]).unwrap()).map(drop)
        }
        0x131 if command.len() > 300 => {
            commands::create_primary(&mut tpm, KeyTemplate::EkRsa2048).map(drop)
        }
        0x131 => commands::create_primary(&mut tpm, KeyTemplate::AkEccP256).map(drop),
        0x173 => commands::read_public(&mut tpm, ak).map(drop),
        0x169 => commands::nv_read_public(&mut tpm, commands::EK_CERT_RSA2048_NV_INDEX).map(drop),
        0x14E => commands::nv_read(
            &mut tpm,
            commands::EK_CERT_RSA2048_NV_INDEX,
            commands::EK_CERT_RSA2048_NV_INDEX,
            0,
            &mut [0u8; 100],
        ),
        0x176 => commands::start_auth_session(&mut tpm, &[1; 32]).map(drop),
        0x151 => commands::policy_secret(&mut tpm, commands::TPM_RH_ENDORSEMENT, 0x0300_0000),
        0x147 => commands::activate_credential(&mut tpm, ak, ek, 0x0300_0000, &[0; 50], &[0; 256])
            .map(drop),
        0x158 => commands::quote(
            &mut tpm,
            ak,
            &[3; 32],
            PcrSelection::from_indices(&[12]).unwrap(),
        )
        .map(drop),
        0x165 => commands::flush_context(&mut tpm, ek),
        other => panic!("unexpected command code {other:#x}"),
    }
}

#[test]
fn hostile_responses_give_errors_never_panics() {
    let swtpm = Swtpm::start();
    let (exchanges, ak, ek) = record_session(&swtpm);
    assert_eq!(exchanges.len(), 14, "one exchange per command");
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for (command, response) in &exchanges {
        // The genuine response parses.
        replay(command, response.clone(), ak, ek)
            .unwrap_or_else(|error| panic!("genuine response: {error:?}"));
        // Every truncation, with the header's size fixed up so the body parsers see the short body.
        for cut in 0..response.len() {
            let mut short = response[..cut].to_vec();
            if short.len() >= 6 {
                short[2..6].copy_from_slice(&(cut as u32).to_be_bytes());
            }
            let result = replay(command, short, ak, ek);
            if cut >= 10 {
                assert!(
                    result.is_err(),
                    "cut at {cut} of {} accepted",
                    response.len()
                );
            }
        }
        // Trailing garbage.
        let mut long = response.clone();
        long.extend_from_slice(&[0xAA; 7]);
        let size = long.len() as u32;
        long[2..6].copy_from_slice(&size.to_be_bytes());
        assert!(
            replay(command, long, ak, ek).is_err(),
            "trailing bytes accepted: {:02x?}",
            &command[6..10]
        );
        // Random byte changes past the header (keeping the size field right).
        for _ in 0..300 {
            let mut mutated = response.clone();
            for _ in 0..rand::Rng::gen_range(&mut rng, 1..4) {
                let at = rand::Rng::gen_range(&mut rng, 0..mutated.len());
                mutated[at] = rand::Rng::gen(&mut rng);
            }
            let _ = replay(command, mutated, ak, ek);
        }
        // Pure noise of random lengths.
        for _ in 0..100 {
            let length = rand::Rng::gen_range(&mut rng, 0..600);
            let noise: Vec<u8> = (0..length).map(|_| rand::Rng::gen(&mut rng)).collect();
            let _ = replay(command, noise, ak, ek);
        }
    }
}

#[test]
fn a_nonzero_code_is_checked_before_the_body() {
    // tpm2-protocol reads an error response as success with an empty body; ours must report the code.
    let mut tpm = Replay {
        response: Some(vec![0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x09, 0x02]),
    };
    let error = commands::pcr_extend(&mut tpm, 12, &[0; 32]).unwrap_err();
    assert!(
        matches!(error, Error::Tpm { command: CommandCode::PcrExtend, code } if code.name() == "TPM_RC_OBJECT_MEMORY"),
        "{error:?}"
    );
    // A success header whose tag contradicts the sessions sent.
    let mut tpm = Replay {
        response: Some(vec![0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0]),
    };
    assert_eq!(
        commands::pcr_extend(&mut tpm, 12, &[0; 32]).unwrap_err(),
        Error::Malformed {
            command: CommandCode::PcrExtend,
            reason: Malformed::Tag
        }
    );
    let _: &dyn Transport = &tpm;
}

#[test]
fn quote_verifies_with_tpm2_checkquote() {
    let program_found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("tpm2_checkquote").is_file()))
        .unwrap_or(false);
    assert!(
        program_found,
        "tpm2_checkquote is required: install the Debian package `tpm2-tools`"
    );
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.connect();
    let ak = commands::create_primary(&mut tpm, KeyTemplate::AkEccP256).unwrap();
    commands::pcr_extend(&mut tpm, 13, &eventlog::sha256(b"model")).unwrap();
    let selection = PcrSelection::from_indices(&[0, 7, 12, 13, 14]).unwrap();
    let nonce = [0x42u8; 32];
    let quote = commands::quote(&mut tpm, ak.handle, &nonce, selection).unwrap();
    let values = commands::pcr_read(&mut tpm, selection).unwrap();

    let dir = support::TempDir::new("checkquote");
    let PublicKey::Ecc { x, y, .. } = ak.public.info().unwrap().key else {
        panic!("AK is not ECC");
    };
    let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    let key = p256::PublicKey::from_sec1_bytes(point.as_bytes()).unwrap();
    let pem =
        p256::pkcs8::EncodePublicKey::to_public_key_pem(&key, p256::pkcs8::LineEnding::LF).unwrap();
    std::fs::write(dir.0.join("ak.pem"), pem).unwrap();
    std::fs::write(dir.0.join("quote.msg"), quote.attest()).unwrap();
    std::fs::write(dir.0.join("quote.sig"), quote.signature()).unwrap();
    let pcrs: Vec<u8> = selection
        .indices()
        .flat_map(|pcr| *values.get(pcr).unwrap())
        .collect();
    std::fs::write(dir.0.join("quote.pcrs"), &pcrs).unwrap();
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();

    let check = |pcr_file: &str, qualification: &str| {
        std::process::Command::new("tpm2_checkquote")
            .current_dir(&dir.0)
            .args([
                "-u",
                "ak.pem",
                "-m",
                "quote.msg",
                "-s",
                "quote.sig",
                "-g",
                "sha256",
            ])
            .args([
                "-f",
                pcr_file,
                "-l",
                "sha256:0,7,12,13,14",
                "-q",
                qualification,
            ])
            .output()
            .expect("run tpm2_checkquote")
    };
    let output = check("quote.pcrs", &hex);
    assert!(
        output.status.success(),
        "tpm2_checkquote rejected our quote: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // And it rejects a wrong nonce and a changed PCR value (so the success above means something).
    let mut wrong = hex.clone();
    wrong.replace_range(0..2, "43");
    assert!(!check("quote.pcrs", &wrong).status.success());
    let mut changed = pcrs.clone();
    changed[70] ^= 1;
    std::fs::write(dir.0.join("changed.pcrs"), &changed).unwrap();
    assert!(!check("changed.pcrs", &hex).status.success());
    commands::flush_context(&mut tpm, ak.handle).unwrap();
}
