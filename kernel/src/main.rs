//! cloister's freestanding kernel: entered from PVH boot, it sets up the CPU and memory, hashes
//! the model it was given, brings up virtio-net and serves the appliance protocol.
//!
//! All of the project's `unsafe` hardware access lives in this binary (DESIGN §1); the logic it
//! relies on is in the host-tested `kernel` library and the `net` crate.
#![no_std]
#![no_main]

extern crate alloc;

mod appliance;
mod arch;
mod clock;
mod console;
mod firmware_log;
mod memory;
mod pci;
mod rng;
mod rt;
mod tpm_device;
mod virtio;

use sha2::{Digest, Sha256};

use arch::cpu;

/// Stops the kernel after a setup failure. The debug console says why; a release image has no
/// console, so it simply never starts serving.
fn fail(_what: &str) -> ! {
    crate::debug!("boot failed: {_what}");
    cpu::halt_forever()
}

/// The Rust entry point, called from `arch::boot` with the PVH start-info address.
#[unsafe(no_mangle)]
extern "C" fn kernel_main(start_info: u64) -> ! {
    let entry_tsc = cpu::rdtsc();
    #[cfg(feature = "debug-console")]
    console::init();
    crate::debug!("cloister kernel entered");
    arch::interrupts::init();
    let mut memory = match memory::init(start_info) {
        Ok(memory) => memory,
        Err(_error) => {
            crate::debug!("memory setup failed: {_error:?}");
            fail("memory")
        }
    };
    crate::debug!(
        "memory: W^X tables live, heap {} MiB, model {} bytes, cmdline {:?}",
        memory.heap_bytes >> 20,
        memory.model.1 - memory.model.0,
        memory.boot.cmdline.as_str()
    );
    firmware_log::show(memory.firmware_event_log());
    let Ok(clock) = clock::Clock::calibrate() else {
        fail("clock calibration")
    };
    crate::debug!("clock: TSC at {} kHz", clock.tsc_hz() / 1000);
    let cmdline = memory.boot.cmdline.as_str();
    let config = match net::serving::ApplianceConfig::from_cmdline(cmdline) {
        Ok(config) => config,
        Err(_error) => {
            crate::debug!("configuration {cmdline:?}: {_error:?}");
            fail("configuration")
        }
    };
    let Ok(mut random) = rng::Random::from_hardware() else {
        fail("no hardware entropy")
    };

    let mut tpm = match tpm_device::open(&clock) {
        Ok(tpm) => tpm,
        Err(_error) => {
            crate::debug!("TPM: {_error:?}");
            fail("TPM")
        }
    };
    match tpm_device::random_seed(&mut tpm) {
        Ok(seed) => random.mix(&seed),
        Err(_error) => {
            crate::debug!("TPM GetRandom: {_error:?}");
            fail("TPM randomness")
        }
    }
    rng::install(random);

    let model = memory.model_bytes();
    let digest: [u8; 32] = Sha256::digest(model).into();
    crate::debug!("model: sha256 computed in {} ms", clock.now_us() / 1000);
    // Everything is measured before any port opens (DESIGN §4).
    let event_log = match tpm_device::measure_boot(&mut tpm, digest, &config, cmdline) {
        Ok(log) => log,
        Err(_error) => {
            crate::debug!("measurement: {_error:?}");
            fail("measurement")
        }
    };
    crate::debug!("measured kernel, model, serving parameters and configuration into PCRs 12-14");
    let Ok(boot_log) = kernel::boot_log::whole_boot(memory.firmware_event_log(), &event_log) else {
        fail("boot log")
    };
    // The engine runs on the blob in place; a model that does not load is never served.
    let engine = match model::gguf::Gguf::parse(model) {
        Ok(gguf) => match model::session::Engine::load(&gguf) {
            Ok(engine) => engine,
            Err(_error) => {
                crate::debug!("model: {_error}");
                fail("model")
            }
        },
        Err(_error) => {
            crate::debug!("model: not a usable GGUF: {_error:?}");
            fail("model")
        }
    };
    crate::debug!(
        "model: {:?}, {} layers, width {}, vocabulary {}, training context {}, SIMD {:?}",
        engine.model.config.arch,
        engine.model.config.n_layers,
        engine.model.config.dim,
        engine.model.config.vocab_size,
        engine.model.config.context_length,
        model::simd::level()
    );
    let identity = match tpm_device::create_identity(&mut tpm) {
        Ok(identity) => identity,
        Err(_error) => {
            crate::debug!("attestation keys: {_error:?}");
            fail("attestation keys")
        }
    };
    crate::debug!(
        "EK, AK created; EK certificate {} bytes",
        identity.ek_certificate.len()
    );

    let transport = match pci::virtio_net(&mut memory) {
        Ok(transport) => transport,
        Err(_error) => {
            crate::debug!("network device: {_error:?}");
            fail("network device")
        }
    };
    let Ok(device) = virtio::NetDevice::new(transport) else {
        fail("virtio-net setup")
    };
    if arch::interrupts::start_wakeup_timer(&clock, 1000).is_err() {
        fail("local APIC timer");
    }
    let info = net::proto::ModelInfo {
        length: model.len() as u64,
        sha256: digest,
    };
    appliance::serve(appliance::Setup {
        config,
        device,
        clock,
        engine,
        info,
        entry_tsc,
        tpm,
        identity,
        event_log,
        boot_log,
    })
}
