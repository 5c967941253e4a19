//! The appliance on two vCPUs (issue 13, "Tests"; docs/ARCHITECTURE.md §2, "Processors"): a debug-console kernel whose
//! image asks for `cpus=3` boots under multi-threaded TCG with only two vCPUs, so the third processor never checks
//! in. It reports both real processors online and the third left out, its greedy output equals `runner generate`'s
//! token for token (which `generation.rs` shows the one-CPU appliance does too), and a generation keeps streaming
//! while another client attests.
//!
//! One boot for the whole binary. Needs qemu-system-x86, swtpm and swtpm-tools: a missing tool fails the test.

mod attest_support;

use std::time::{Duration, Instant};

use attest_support::*;
use client::manifest::Manifest;
use client::session::{Ending, UnverifiedSession};
use runner::appliance::{Appliance, BootOptions};
use runner::image::{self, KernelFlavor};
use runner::qemu::AccelChoice;

/// Tokens generated per prompt.
const MAX_TOKENS: u32 = 32;

#[test]
fn two_cpus_come_up_a_missing_third_is_left_out_and_tokens_equal_one_cpus() {
    runner::tools::require(&runner::tools::BOOT_TOOLS).expect("QEMU and swtpm are needed");
    let flavor = KernelFlavor {
        debug_console: true,
        panic_test: false,
    };
    let kernel = image::build_kernel(flavor).expect("the debug-console kernel builds");
    let cmdline = image::with_cpus(CMDLINE, 3);
    let image = image::assemble(
        &kernel,
        tiny_model(),
        &cmdline,
        &scratch().join("smp"),
        flavor,
    )
    .expect("assemble the image");
    let manifest = Manifest::for_image(&image.kernel, &image.model, &image.cmdline)
        .expect("the image's manifest");
    assert!(
        manifest.serving.text.ends_with("cpus=3\n"),
        "the CPU count is measured: {:?}",
        manifest.serving.text
    );
    let mut options = BootOptions::new(image.clone());
    options.accel = AccelChoice::Tcg;
    options.mem_mib = 512;
    options.cpus = Some(2);
    options.echo_serial = false;
    options.cache_dir = scratch().to_path_buf();
    options.ready_timeout = Some(Duration::from_secs(300));
    let appliance = Appliance::boot(&options).expect("the appliance boots on two vCPUs");
    let serial = std::fs::read_to_string(appliance.state_dir().join("serial.log"))
        .expect("the debug console's log");
    let smp_line = serial
        .lines()
        .find(|line| line.starts_with("smp: ") && line.contains("wanted online"))
        .unwrap_or_else(|| panic!("no bring-up report on the debug console:\n{serial}"));
    eprintln!("{smp_line}");
    assert!(
        smp_line.contains("2 of 3 wanted online, 1 failed"),
        "both processors must be online and the missing third left out: {smp_line}"
    );
    if let Some(overhead) = serial.lines().find(|line| line.contains("fork/join")) {
        eprintln!("{overhead}");
    }
    let trust = appliance
        .certificate_authority()
        .trust_anchors()
        .expect("the CA's certificates load");

    let connect = || {
        let session = UnverifiedSession::connect(appliance.endpoint(), CLIENT_TIMEOUT)
            .expect("TLS 1.3 handshake with the appliance");
        session
            .verify(&manifest, &trust, &verify_options())
            .unwrap_or_else(|error| panic!("the honest appliance failed verification: {error:#}"))
            .0
    };
    let mut session = connect();
    let prompts = [
        TestPrompt::Raw("Once upon a time, in a land far away, there lived".into()),
        TestPrompt::Chat("What is the capital of France?".into()),
    ];
    for prompt in &prompts {
        let host = host_generate(tiny_model(), prompt, MAX_TOKENS as usize);
        // While this generation streams, a second client attests on its own session.
        let attested = std::thread::scope(|scope| {
            let other = scope.spawn(|| {
                let started = Instant::now();
                drop(connect());
                started.elapsed()
            });
            let completion = session
                .complete(prompt.request(MAX_TOKENS), None, |_| {})
                .unwrap_or_else(|error| panic!("{prompt:?}: generation failed: {error:#}"));
            let ids: Vec<u32> = completion.tokens.iter().map(|token| token.id).collect();
            assert_eq!(
                ids, host.generated_ids,
                "{prompt:?}: the two-CPU appliance's greedy ids differ from runner generate's"
            );
            assert!(matches!(completion.ending, Ending::Done(_)));
            other.join().expect("the attesting client")
        });
        eprintln!(
            "{prompt:?}: {} ids equal on two CPUs; a second client attested in {:.1} s meanwhile",
            host.generated_ids.len(),
            attested.as_secs_f64()
        );
    }
    drop(appliance);
}
