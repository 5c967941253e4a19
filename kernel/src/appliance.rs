//! The appliance's request handler: model info, attestation bound to the TLS session (docs/ARCHITECTURE.md §4),
//! credential activation, and streamed generation over the pool of engine sessions reserved at boot
//! (docs/ARCHITECTURE.md §5, issue 5). It is plain logic over a TPM transport, a source of randomness and a clock,
//! so the host tests it against swtpm and a tiny model; the kernel binary gives it the MMIO TPM,
//! its DRBG and the TSC.
//!
//! TPM work is rate-limited (issue 12; docs/ARCHITECTURE.md §5), because each command can take hundreds of
//! milliseconds on a cloud vTPM and nothing else runs meanwhile. Per connection, the server answers one attest
//! and one activation (`net::Limits::request_caps`). Globally, a TPM request (attest or activation) starts
//! at most once per [`TPM_MIN_GAP_US`], and never sooner after the previous one ended than that one took (the
//! TPM is busy at most half the time); while a generation runs, at most one TPM request runs per server poll,
//! and a poll steps each generation once, so a generation is never stalled by more than one TPM request
//! between two of its steps (and one whose client reads slowly, stepping rarely, does not hold the TPM back). A request that may not run yet is
//! answered [`Reply::Defer`]: the server keeps it and offers it again on a later poll.

use alloc::vec::Vec;

use model::parallel::{ParallelFor, Serial};
use net::proto::{ChannelBinding, ErrorCode, Evidence, ModelInfo, Request, Response};
use net::{Handler, Reply, Step};
use tpm::commands::{self as tpm_commands, PcrSelection};
use tpm::transport::Transport;

use crate::boot_tpm::Identity;
use crate::generations::Generations;

/// Answers requests from what was measured at boot, from the TPM and from the engine.
///
/// `random` fills a buffer with fresh random bytes (false when it cannot); `now_us` is a monotonic
/// clock in microseconds.
pub struct Appliance<'e, T, R, C> {
    info: ModelInfo,
    tpm: T,
    identity: Identity,
    /// The serialized event log that evidence carries.
    event_log: Vec<u8>,
    /// The whole boot's crypto-agile log (`crate::boot_log::whole_boot`): the firmware's events, then the
    /// kernel's own.
    boot_log: Vec<u8>,
    generations: Generations<'e>,
    /// Where the engine's products run: [`Serial`] unless [`Appliance::with_parallel`] gives the kernel's pool.
    par: &'e dyn ParallelFor,
    random: R,
    now_us: C,
    /// The clock reading before which no TPM request may start (the global rate limit).
    tpm_ready_us: u64,
    /// Server polls so far ([`Handler::poll_started`]).
    polls: u64,
    /// The poll in which the last TPM request ran.
    tpm_poll: Option<u64>,
}

/// The shortest time from the start of one TPM request (attest or activation) to the start of the next.
pub const TPM_MIN_GAP_US: u64 = 100_000;

impl<'e, T, R, C> Appliance<'e, T, R, C>
where
    T: Transport,
    R: FnMut(&mut [u8]) -> bool,
    C: Fn() -> u64,
{
    /// The handler over what boot produced. `event_log` is the serialized log evidence carries, `boot_log`
    /// the whole boot's crypto-agile log.
    #[allow(
        clippy::too_many_arguments,
        reason = "each is one thing boot produced; a struct would only rename them"
    )]
    pub fn new(
        info: ModelInfo,
        tpm: T,
        identity: Identity,
        event_log: Vec<u8>,
        boot_log: Vec<u8>,
        generations: Generations<'e>,
        random: R,
        now_us: C,
    ) -> Self {
        Self {
            info,
            tpm,
            identity,
            event_log,
            boot_log,
            generations,
            par: &Serial,
            random,
            now_us,
            tpm_ready_us: 0,
            polls: 0,
            tpm_poll: None,
        }
    }

    /// Whether a TPM request may start now (see the module's rate limits).
    fn tpm_may_run(&self) -> bool {
        let stalls_generation = self.tpm_poll == Some(self.polls) && self.generations.any_running();
        (self.now_us)() >= self.tpm_ready_us && !stalls_generation
    }

    /// Runs `work` (one TPM request) and sets when the next may start.
    fn with_tpm(&mut self, work: impl FnOnce(&mut Self) -> Response) -> Response {
        let started = (self.now_us)();
        let response = work(self);
        let ended = (self.now_us)();
        let took = ended.saturating_sub(started);
        self.tpm_ready_us = (started + TPM_MIN_GAP_US).max(ended.saturating_add(took));
        self.tpm_poll = Some(self.polls);
        response
    }

    /// Runs the engine's products on `par` (the kernel's processors) instead of serially.
    pub fn with_parallel(mut self, par: &'e dyn ParallelFor) -> Self {
        self.par = par;
        self
    }

    /// The generation pool.
    pub fn generations(&self) -> &Generations<'e> {
        &self.generations
    }

    /// The generation pool, for tests that change its settings.
    #[cfg(test)]
    pub(crate) fn generations_mut(&mut self) -> &mut Generations<'e> {
        &mut self.generations
    }

    /// The TPM, for tests that read what the handler left there.
    pub fn tpm(&mut self) -> &mut T {
        &mut self.tpm
    }

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
            firmware_log: self.boot_log.clone(),
        })
    }

    /// TPM2_ActivateCredential with the EK's policy session (PolicySecret on the endorsement
    /// hierarchy), proving the AK and the certified EK share this TPM.
    fn activate(&mut self, credential_blob: &[u8], secret: &[u8]) -> Response {
        let mut nonce = [0u8; 32];
        if !(self.random)(&mut nonce) {
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

impl<T, R, C> Handler for Appliance<'_, T, R, C>
where
    T: Transport,
    R: FnMut(&mut [u8]) -> bool,
    C: Fn() -> u64,
{
    fn handle(
        &mut self,
        slot: usize,
        request: &Request,
        binding: Option<&ChannelBinding>,
    ) -> Reply {
        let needs_tpm = matches!(
            request,
            Request::Attest { .. } | Request::ActivateCredential { .. }
        );
        if needs_tpm && !self.tpm_may_run() {
            return Reply::Defer;
        }
        let response = match request {
            Request::ModelInfo => Response::ModelInfo(self.info),
            Request::Attest { nonce, pcr_mask } => {
                self.with_tpm(|appliance| appliance.attest(nonce, *pcr_mask, binding))
            }
            Request::ActivateCredential {
                credential_blob,
                secret,
            } => self.with_tpm(|appliance| appliance.activate(credential_blob, secret)),
            Request::Generate(generate) => return self.generations.start(slot, generate),
            // The server keeps cancels to itself (a running generation becomes `stop`, the answer `Cancelled`);
            // should one arrive anyway, it frees whatever this slot runs and says so.
            Request::Cancel => {
                self.generations.stop(slot);
                Response::Error(ErrorCode::Cancelled)
            }
        };
        Reply::Response(response)
    }

    fn poll_started(&mut self) {
        self.polls += 1;
    }

    fn step(&mut self, slot: usize) -> Step {
        self.generations.step(slot, self.par, &self.now_us)
    }

    fn stop(&mut self, slot: usize) {
        self.generations.stop(slot);
    }
}
