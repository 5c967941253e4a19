//! The appliance's main loop: poll the network server, answer requests, and sleep on HLT until
//! the next timer tick when there is nothing to do.

use alloc::vec::Vec;

use net::proto::{ErrorCode, Evidence, ModelInfo, Request, Response};
use net::{Handler, NetConfig, Server};
use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;
use tpm::commands::{self as tpm_commands, PcrSelection};
use tpm::eventlog::EventLog;

use crate::arch::cpu;
use crate::clock::Clock;
use crate::rng::Random;
use crate::tpm_device::{Identity, KernelTpm};
use crate::virtio::NetDevice;

/// What the main loop needs from boot.
pub struct Setup<'a> {
    /// The kernel command line (network configuration).
    pub cmdline: &'a str,
    /// The NIC.
    pub device: NetDevice,
    /// Time.
    pub clock: Clock,
    /// Randomness.
    pub random: &'a mut Random,
    /// The model's length and digest.
    pub info: ModelInfo,
    /// TSC at kernel entry, for the boot-time report.
    pub entry_tsc: u64,
    /// The TPM.
    pub tpm: KernelTpm<'a>,
    /// The attestation keys.
    pub identity: Identity,
    /// What was measured at boot.
    pub event_log: EventLog,
}

/// Answers requests from what was measured at boot and from the TPM.
struct Appliance<'a> {
    info: ModelInfo,
    tpm: KernelTpm<'a>,
    identity: Identity,
    event_log: Vec<u8>,
    random: &'a mut Random,
}

impl Appliance<'_> {
    /// TPM2_Quote with the AK over the requested PCRs, the PCR values, and what a verifier needs.
    fn attest(&mut self, nonce: &[u8; 32], pcr_mask: u32) -> Response {
        let selection = match PcrSelection::from_mask(pcr_mask) {
            Some(selection) if !selection.is_empty() => selection,
            _ => return Response::Error(ErrorCode::BadRequest),
        };
        let qualifying_data = net::proto::qualifying_data(nonce);
        let quote = match tpm_commands::quote(
            &mut self.tpm,
            self.identity.ak.handle,
            &qualifying_data,
            selection,
        ) {
            Ok(quote) => quote,
            Err(_) => return Response::Error(ErrorCode::TpmFailure),
        };
        let Ok(values) = tpm_commands::pcr_read(&mut self.tpm, selection) else {
            return Response::Error(ErrorCode::TpmFailure);
        };
        Response::Evidence(Evidence {
            attest: quote.attest().to_vec(),
            signature: quote.signature().to_vec(),
            ak_public: self.identity.ak.public.as_bytes().to_vec(),
            ek_public: self.identity.ek.public.as_bytes().to_vec(),
            ek_certificate: self.identity.ek_certificate.clone(),
            pcr_values: selection
                .indices()
                .map(|pcr| values.values[usize::from(pcr)])
                .collect(),
            event_log: self.event_log.clone(),
        })
    }

    /// TPM2_ActivateCredential with the EK's policy session (PolicySecret on the endorsement
    /// hierarchy), proving the AK and the certified EK share this TPM.
    fn activate(&mut self, credential_blob: &[u8], secret: &[u8]) -> Response {
        let mut nonce = [0u8; 32];
        self.random.fill(&mut nonce);
        match tpm_commands::activate_credential_with_ek(
            &mut self.tpm,
            self.identity.ak.handle,
            self.identity.ek.handle,
            &nonce,
            credential_blob,
            secret,
        ) {
            Ok(credential) => Response::Credential(credential.as_bytes().to_vec()),
            Err(_) => Response::Error(ErrorCode::TpmFailure),
        }
    }
}

impl Handler for Appliance<'_> {
    fn handle(&mut self, request: &Request) -> Response {
        match request {
            Request::ModelInfo => Response::ModelInfo(self.info),
            Request::Attest { nonce, pcr_mask } => self.attest(nonce, *pcr_mask),
            Request::ActivateCredential {
                credential_blob,
                secret,
            } => self.activate(credential_blob, secret),
        }
    }
}

fn now(clock: &Clock) -> Instant {
    Instant::from_micros(clock.now_us() as i64)
}

/// Serves forever.
pub fn serve(setup: Setup) -> ! {
    let Setup {
        cmdline,
        mut device,
        clock,
        random,
        info,
        entry_tsc,
        tpm,
        identity,
        event_log,
    } = setup;
    let config = match NetConfig::parse(cmdline) {
        Ok(config) => config,
        Err(_error) => {
            crate::debug!("network configuration {cmdline:?}: {_error:?}");
            crate::fail("network configuration")
        }
    };
    let mac = EthernetAddress(device.mac_address());
    let mut server = match Server::new(config, mac, &mut device, now(&clock), random.next_u64()) {
        Ok(server) => server,
        Err(_error) => {
            crate::debug!("network server: {_error:?}");
            crate::fail("network server")
        }
    };
    let mut log_bytes = alloc::vec![0u8; event_log.buffer_len()];
    let written = event_log.emit(&mut log_bytes).unwrap_or(0);
    log_bytes.truncate(written);
    let mut appliance = Appliance {
        info,
        tpm,
        identity,
        event_log: log_bytes,
        random,
    };
    let mut listening = false;
    loop {
        let outcome = server.poll(now(&clock), &mut device, &mut appliance);
        if !listening && server.ipv4_cidr().is_some() {
            listening = true;
            let _ticks = cpu::rdtsc().wrapping_sub(entry_tsc);
            crate::debug!(
                "listening on {}:{} ({} us after kernel entry, {} TSC ticks)",
                server
                    .ipv4_cidr()
                    .map(|cidr| cidr.address())
                    .unwrap_or(smoltcp::wire::Ipv4Address::UNSPECIFIED),
                server.port(),
                u128::from(_ticks) * 1_000_000 / u128::from(clock.tsc_hz()),
                _ticks
            );
        }
        if !outcome.activity {
            // The NIC raises no interrupt here; the 1 ms APIC tick bounds the added latency.
            cpu::wait_for_interrupt();
        }
    }
}
