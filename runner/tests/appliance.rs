//! Booting under QEMU + swtpm through the runner's library: a real boot answers over TLS with the exact
//! model digest and leaves no process behind; failures quote QEMU's output and also clean up.
//!
//! Needs qemu-system-x86, swtpm and swtpm-tools; a missing tool fails the test (it is not skipped).

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::Duration;

use runner::{image, models, tools, Appliance, BootOptions, Image, KernelFlavor};

/// Process ids whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) && pid != std::process::id() {
            found.push(pid);
        }
    }
    found
}

/// A deterministic pseudo-random "model" of `len` bytes.
fn model_bytes(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// An image directory holding `kernel` bytes instead of a real kernel.
fn fake_image(dir: &Path, kernel: &[u8]) -> Image {
    let kernel_file = dir.join("built-kernel");
    let model = dir.join("model.bin");
    std::fs::write(&kernel_file, kernel).unwrap();
    std::fs::write(&model, model_bytes(4096, 1)).unwrap();
    image::assemble(
        &kernel_file,
        &model,
        image::DEFAULT_CMDLINE,
        &dir.join("image"),
        KernelFlavor::default(),
    )
    .unwrap()
}

fn options(image: Image, cache: &Path) -> BootOptions {
    let mut options = BootOptions::new(image);
    options.cache_dir = cache.to_path_buf();
    options.ready_timeout = Some(Duration::from_secs(60));
    options
}

#[test]
fn boots_answers_with_the_model_digest_and_stops_cleanly() {
    tools::require(&tools::BOOT_TOOLS).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let kernel = image::build_kernel(KernelFlavor::default()).unwrap();
    // The kernel serves only a model its engine loads: the generated tiny llama.
    let model = scratch.path().join("tiny-llama.gguf");
    let bytes = model::tiny::generate(&model::tiny::TinySpec::llama(), 7);
    std::fs::write(&model, &bytes).unwrap();
    let image = image::assemble(
        &kernel,
        &model,
        image::DEFAULT_CMDLINE,
        &scratch.path().join("image"),
        KernelFlavor::default(),
    )
    .unwrap();
    let (length, digest) = models::sha256_file(&model).unwrap();

    let appliance = Appliance::boot(&options(image, scratch.path())).unwrap();
    eprintln!(
        "booted in {:?} at {}",
        appliance.boot_duration(),
        appliance.endpoint()
    );
    assert_eq!(appliance.model_info().length, length);
    assert_eq!(appliance.model_info().sha256, digest);
    // A second, independent request (its own TLS session) gets the same answer.
    let info = client::model_info(appliance.endpoint(), Duration::from_secs(30)).unwrap();
    assert_eq!((info.length, info.sha256), (bytes.len() as u64, digest));
    // A release kernel writes nothing to the serial port.
    assert!(appliance.serial_output().unwrap().is_empty());
    assert!(appliance
        .certificate_authority()
        .root_certificate()
        .is_file());

    let pids = appliance.process_ids();
    let state = appliance.state_dir().to_path_buf();
    appliance.shutdown().unwrap();
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the appliance"
        );
    }
    assert!(!state.exists(), "the run's state directory was not removed");
}

#[test]
fn qemu_failure_is_reported_with_its_output() {
    tools::require(&tools::BOOT_TOOLS).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let image = fake_image(scratch.path(), &[0x5a; 1000]);
    let image_dir = image.dir.to_str().unwrap().to_string();
    let error = Appliance::boot(&options(image, scratch.path()))
        .err()
        .expect("a garbage kernel booted");
    let message = format!("{error:#}");
    assert!(message.contains("QEMU exited"), "{message}");
    assert!(
        message.contains("linux kernel too old"),
        "QEMU's own words are missing: {message}"
    );
    assert!(
        processes_mentioning(&image_dir).is_empty(),
        "QEMU or swtpm outlived the failed boot"
    );
}

#[test]
fn a_taken_port_is_named() {
    tools::require(&tools::BOOT_TOOLS).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut options = options(fake_image(scratch.path(), &[0x5a; 1000]), scratch.path());
    options.port = port;
    let message = format!(
        "{:#}",
        Appliance::boot(&options)
            .err()
            .expect("booted on a taken port")
    );
    assert!(
        message.contains(&format!("host port {port} is already in use")),
        "{message}"
    );
    assert!(message.contains("--port 0"), "{message}");
}
