//! cloister's freestanding kernel: entered from PVH boot, it sets up the CPU and memory, hashes
//! the model it was given, brings up virtio-net and serves the appliance protocol.
//!
//! All of the project's `unsafe` hardware access lives in this binary (docs/ARCHITECTURE.md §1); the logic it
//! relies on is in the host-tested `kernel` library and the `net` crate.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod clock;
mod console;
mod firmware_log;
mod memory;
mod pci;
mod rng;
mod rt;
mod serve;
mod smp;
mod tpm_device;
mod virtio;

use sha2::{Digest, Sha256};

use arch::cpu;

/// Stops the kernel when a setup step fails. The debug console says which step and why; a release
/// image has no console, so it simply never starts serving.
trait OrHalt<T> {
    fn or_halt(self, step: &str) -> T;
}

impl<T, E: core::fmt::Debug> OrHalt<T> for Result<T, E> {
    // Inlined so that a release image, where `debug!` prints nothing, keeps no step names.
    #[inline(always)]
    fn or_halt(self, _step: &str) -> T {
        match self {
            Ok(value) => value,
            Err(_error) => {
                crate::debug!("boot failed: {_step}: {_error:?}");
                cpu::halt_forever()
            }
        }
    }
}

/// The Rust entry point, called from `arch::boot` with the PVH start-info address.
#[unsafe(no_mangle)]
extern "C" fn kernel_main(start_info: u64) -> ! {
    let entry_tsc = cpu::rdtsc();
    // First, before anything writes the data segment: its initial bytes are measured as loaded.
    let kernel_digest = tpm_device::kernel_image_digest().or_halt("kernel data segment");
    #[cfg(feature = "debug-console")]
    console::init();
    crate::debug!("cloister kernel entered");
    arch::interrupts::init();
    let mut memory = memory::init(start_info).or_halt("memory setup");
    crate::debug!(
        "memory: W^X tables live, heap {} MiB, model {} bytes, cmdline {:?}",
        memory.heap_bytes >> 20,
        memory.model.1 - memory.model.0,
        memory.boot.cmdline.as_str()
    );
    firmware_log::show(memory.firmware_event_log());
    if cfg!(feature = "panic-test") {
        panic!("panic-test: panicking on purpose");
    }
    let clock = clock::Clock::calibrate().or_halt("clock calibration");
    crate::debug!("clock: TSC at {} kHz", clock.tsc_hz() / 1000);
    let cmdline = memory.boot.cmdline.as_str();
    let config = net::serving::ApplianceConfig::from_cmdline(cmdline).or_halt("configuration");
    let mut random = rng::Random::from_hardware().or_halt("hardware entropy");
    smp::start_and_report(
        &memory.madt,
        &memory.boot,
        &mut memory.space,
        config.serving.cpus,
        &clock,
    );

    let mut tpm = tpm_device::open(&clock).or_halt("TPM");
    let seed = kernel::boot_tpm::random_seed(&mut tpm).or_halt("TPM GetRandom");
    random.mix(&seed);
    rng::install(random);

    let model = memory.model_bytes();
    let digest: [u8; 32] = Sha256::digest(model).into();
    crate::debug!("model: sha256 computed in {} ms", clock.now_us() / 1000);
    // Everything is measured before any port opens (docs/ARCHITECTURE.md §4).
    let event_log =
        kernel::boot_tpm::measure_boot(&mut tpm, kernel_digest, digest, &config, cmdline)
            .or_halt("measurement");
    crate::debug!("measured kernel, model, serving parameters and configuration into PCRs 12-14");
    let boot_log =
        kernel::boot_log::whole_boot(memory.firmware_event_log(), &event_log).or_halt("boot log");
    // The engine runs on the blob in place; a model that does not load is never served.
    let gguf = model::gguf::Gguf::parse(model).or_halt("model: not a usable GGUF");
    let engine = model::session::Engine::load(&gguf).or_halt("model");
    crate::debug!(
        "model: {:?}, {} layers, width {}, vocabulary {}, training context {}, SIMD {:?}",
        engine.model.config.arch,
        engine.model.config.n_layers,
        engine.model.config.dim,
        engine.model.config.vocab_size,
        engine.model.config.context_length,
        model::simd::level()
    );
    let identity = kernel::boot_tpm::create_identity(&mut tpm).or_halt("attestation keys");
    crate::debug!(
        "EK, AK created; EK certificate {} bytes",
        identity.ek_certificate.len()
    );

    let transport = pci::virtio_net(&mut memory).or_halt("network device");
    let device = virtio::NetDevice::new(transport).or_halt("virtio-net setup");
    arch::interrupts::start_wakeup_timer(&clock, 1000).or_halt("local APIC timer");
    let info = net::proto::ModelInfo {
        length: model.len() as u64,
        sha256: digest,
    };
    serve::serve(serve::Setup {
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
