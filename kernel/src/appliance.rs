//! The appliance's main loop and request handler: TLS 1.3 on the one port, model info, attestation bound to the
//! TLS session (DESIGN §4), credential activation, and streamed generation over a pool of engine sessions reserved
//! at boot (DESIGN §5, issue 5). The loop polls the network server, and sleeps on HLT until the next timer tick
//! only while no generation is running.
//! The sessions and what each costs in memory: `kernel::generations`.

use alloc::vec::Vec;

use kernel::generations::Generations;
use model::parallel::Serial;
use model::session::Engine;
use net::proto::{ChannelBinding, ErrorCode, Evidence, ModelInfo, Request, Response};
use net::serving::ApplianceConfig;
use net::tls::TlsServer;
use net::{Handler, Reply, Server, Step};
use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;
use tpm::commands::{self as tpm_commands, PcrSelection};
use tpm::eventlog::EventLog;

use crate::arch::cpu;
use crate::clock::Clock;
use crate::rng;
use crate::tpm_device::{Identity, KernelTpm};
use crate::virtio::NetDevice;
use crate::OrHalt;

/// What the main loop needs from boot.
pub struct Setup<'a> {
    /// Network, serving parameters and connection limits, from the command line.
    pub config: ApplianceConfig,
    /// The NIC.
    pub device: NetDevice,
    /// Time.
    pub clock: Clock,
    /// The model, loaded in place from the initrd.
    pub engine: Engine<'static>,
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

/// Answers requests from what was measured at boot, from the TPM and from the engine.
struct Appliance<'a> {
    info: ModelInfo,
    tpm: KernelTpm<'a>,
    identity: Identity,
    event_log: Vec<u8>,
    generations: Generations<'static>,
    clock: &'a Clock,
}

impl Appliance<'_> {
    /// TPM2_Quote with the AK over the requested PCRs, qualified by the nonce and the TLS session the request came
    /// on, the PCR values, and what a verifier needs.
    fn attest(
        &mut self,
        nonce: &[u8; 32],
        pcr_mask: u32,
        binding: Option<&ChannelBinding>,
    ) -> Response {
        let Some(binding) = binding else {
            return Response::Error(ErrorCode::Unbound);
        };
        let selection = match PcrSelection::from_mask(pcr_mask) {
            Some(selection) if !selection.is_empty() => selection,
            _ => return Response::Error(ErrorCode::BadRequest),
        };
        let qualifying_data = net::proto::qualifying_data(nonce, binding);
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
        if !rng::fill(&mut nonce) {
            return Response::Error(ErrorCode::TpmFailure);
        }
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
    fn handle(
        &mut self,
        slot: usize,
        request: &Request,
        binding: Option<&ChannelBinding>,
    ) -> Reply {
        let response = match request {
            Request::ModelInfo => Response::ModelInfo(self.info),
            Request::Attest { nonce, pcr_mask } => self.attest(nonce, *pcr_mask, binding),
            Request::ActivateCredential {
                credential_blob,
                secret,
            } => self.activate(credential_blob, secret),
            Request::Generate(generate) => {
                let _started = self.clock.now_us();
                let reply = self.generations.start(slot, generate);
                crate::debug!(
                    "slot {slot}: generate {:?} in {} us",
                    reply,
                    self.clock.now_us() - _started
                );
                return reply;
            }
            // The server keeps cancels to itself (a running generation becomes `stop`, the answer `Cancelled`);
            // should one arrive anyway, it frees whatever this slot runs and says so.
            Request::Cancel => {
                self.generations.stop(slot);
                Response::Error(ErrorCode::Cancelled)
            }
        };
        Reply::Response(response)
    }

    fn step(&mut self, slot: usize) -> Step {
        let clock = self.clock;
        let step = self.generations.step(slot, &Serial, &|| clock.now_us());
        if let Step::Final(ref _last) = step {
            crate::debug!("slot {slot}: {_last:?} at {} us", clock.now_us());
        }
        step
    }

    fn stop(&mut self, slot: usize) {
        self.generations.stop(slot);
    }
}

fn now(clock: &Clock) -> Instant {
    Instant::from_micros(clock.now_us() as i64)
}

/// Serves forever.
pub fn serve(setup: Setup) -> ! {
    let Setup {
        config,
        mut device,
        clock,
        engine,
        info,
        entry_tsc,
        tpm,
        identity,
        event_log,
    } = setup;

    let heap_before = crate::memory::heap_used();
    let generations = Generations::reserve(engine, &config.serving);
    let _per_session = (crate::memory::heap_used() - heap_before) / generations.sessions().max(1);
    crate::debug!(
        "engine: {} sessions of {} positions reserved, {} KiB each ({} MiB in all)",
        generations.sessions(),
        generations.context(),
        _per_session / 1024,
        (crate::memory::heap_used() - heap_before) >> 20
    );

    let tls = TlsServer::new(&rng::TLS_RANDOM).or_halt("TLS identity");
    crate::debug!(
        "TLS: fresh P-256 key, SPKI sha256 {:02x?}",
        tls.identity().spki_sha256()
    );
    let mac = EthernetAddress(device.mac_address());
    let mut server = Server::with_tls(
        config.net,
        config.limits,
        mac,
        &mut device,
        now(&clock),
        rng::next_u64(),
        tls,
    )
    .or_halt("network server");
    let mut log_bytes = alloc::vec![0u8; event_log.buffer_len()];
    let written = event_log.emit(&mut log_bytes).unwrap_or(0);
    log_bytes.truncate(written);
    let mut appliance = Appliance {
        info,
        tpm,
        identity,
        event_log: log_bytes,
        generations,
        clock: &clock,
    };
    let mut listening = false;
    loop {
        let outcome = server.poll(now(&clock), &mut device, &mut appliance);
        if !listening && server.ipv4_cidr().is_some() {
            listening = true;
            let _ticks = cpu::rdtsc().wrapping_sub(entry_tsc);
            crate::debug!(
                "listening on {}:{} with TLS ({} us after kernel entry, {} TSC ticks)",
                server
                    .ipv4_cidr()
                    .map(|cidr| cidr.address())
                    .unwrap_or(smoltcp::wire::Ipv4Address::UNSPECIFIED),
                server.port(),
                u128::from(_ticks) * 1_000_000 / u128::from(clock.tsc_hz()),
                _ticks
            );
        }
        // A running generation is work to do on the next poll: sleep only when nothing runs. The NIC raises no
        // interrupt here; the 1 ms APIC tick bounds the added latency of a packet while idle.
        if !outcome.activity && !appliance.generations.any_running() {
            cpu::wait_for_interrupt();
        }
    }
}
