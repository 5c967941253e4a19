//! The appliance's main loop over the real NIC: TLS 1.3 on the one port, requests answered by the
//! host-tested handler `kernel::appliance::Appliance` over the MMIO TPM, the DRBG and the TSC.
//! The loop polls the network server, and sleeps on HLT until the next timer tick only while no
//! generation is running; a request the handler deferred (the TPM's rate limit) is offered again on the
//! poll after the next tick. The sessions and what each costs in memory: `kernel::generations`.

use alloc::vec::Vec;

use kernel::appliance::Appliance;
use kernel::boot_tpm::Identity;
use kernel::generations::Generations;
use model::session::Engine;
use net::proto::ModelInfo;
use net::serving::ApplianceConfig;
use net::tls::TlsServer;
use net::Server;
use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;
use tpm::eventlog::EventLog;

use crate::arch::cpu;
use crate::clock::Clock;
use crate::rng;
use crate::tpm_device::KernelTpm;
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
    /// The whole boot's crypto-agile log (`kernel::boot_log::whole_boot`).
    pub boot_log: Vec<u8>,
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
        boot_log,
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
    let mut appliance = Appliance::new(
        info,
        tpm,
        identity,
        log_bytes,
        boot_log,
        generations,
        rng::fill,
        || clock.now_us(),
    )
    .with_parallel(&crate::smp::POOL);
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
        if !outcome.activity && !appliance.generations().any_running() {
            cpu::wait_for_interrupt();
        }
    }
}
