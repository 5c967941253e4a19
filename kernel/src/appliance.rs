//! The appliance's main loop: poll the network server, answer requests, and sleep on HLT until
//! the next timer tick when there is nothing to do.

use net::proto::{ModelInfo, Request, Response};
use net::{Handler, NetConfig, Server};
use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;

use crate::arch::cpu;
use crate::clock::Clock;
use crate::rng::Random;
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
}

/// Answers requests from what was measured at boot.
struct Appliance {
    info: ModelInfo,
}

impl Handler for Appliance {
    fn handle(&mut self, request: &Request) -> Response {
        match request {
            Request::ModelInfo => Response::ModelInfo(self.info),
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
    let mut appliance = Appliance { info };
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
