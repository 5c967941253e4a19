//! The appliance on several vCPUs (issue 13, "Tests"; docs/ARCHITECTURE.md §2, "Processors"), under multi-threaded
//! TCG with the tiny model:
//!
//! - a test build (`ap-fail-test`) in which the first application processor started stops before it checks in,
//!   on three vCPUs: the bootstrap processor times out on it, reports it left out and the other two online, and
//!   serves on those two; its greedy output equals `cloister generate`'s token for token (which `generation.rs`
//!   shows the one-CPU appliance does too), and a generation keeps streaming while another client attests;
//! - the same with `cpus=4` on four vCPUs, every processor online;
//! - four sessions stream at once on two vCPUs, each equal to `cloister generate`, and interleave as they do on one
//!   (`generation.rs`).
//!
//! One boot per test, one test at a time (they would share the host's two cores). Needs qemu-system-x86, swtpm and
//! swtpm-tools: a missing tool fails the test.

mod attest_support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use attest_support::*;
use client::manifest::Manifest;
use client::session::{Ending, UnverifiedSession};
use runner::appliance::{Appliance, BootOptions};
use runner::image::{self, KernelFlavor, Sabotage};
use runner::qemu::AccelChoice;

/// Tokens generated per prompt.
const MAX_TOKENS: u32 = 32;

/// Held by each test while it runs its appliance.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn an_ap_that_fails_to_start_is_left_out_and_the_other_two_serve() {
    cpus_come_up_and_tokens_equal_runner_generate(
        Sabotage::ApFails,
        3,
        3,
        &["2 of 3 wanted online, 1 failed", "engine on 2 CPUs"],
    );
}

#[test]
fn four_cpus_come_up_and_tokens_equal_runner_generate() {
    cpus_come_up_and_tokens_equal_runner_generate(
        Sabotage::None,
        4,
        4,
        &["4 of 4 wanted online, 0 failed", "engine on 4 CPUs"],
    );
}

#[test]
fn four_sessions_interleave_on_two_cpus_as_on_one() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let booted = boot_tiny_on("smp-streams", 2);
    streams::four_sessions_stream_at_once_interleaved_and_a_fifth_is_busy(&booted, 2);
}

/// Boots a debug-console image (with `sabotage` built in) that asks for `wanted` processors on `vcpus` vCPUs,
/// checks that the bring-up report says each of `report`, and that greedy output equals `cloister generate`'s while another
/// client attests.
fn cpus_come_up_and_tokens_equal_runner_generate(
    sabotage: Sabotage,
    wanted: u32,
    vcpus: u32,
    report: &[&str],
) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    runner::tools::require(&runner::tools::BOOT_TOOLS).expect("QEMU and swtpm are needed");
    let flavor = KernelFlavor {
        debug_console: true,
        sabotage,
    };
    let kernel = image::build_kernel(flavor).expect("the debug-console kernel builds");
    let cmdline = image::with_cpus(CMDLINE, wanted);
    let image = image::assemble(
        &kernel,
        tiny_model(),
        &cmdline,
        &scratch().join(format!("smp-{wanted}-on-{vcpus}-{sabotage:?}")),
        flavor,
    )
    .expect("assemble the image");
    let manifest = Manifest::for_image(&image.kernel, &image.model, &image.cmdline)
        .expect("the image's manifest");
    assert!(
        manifest.serving.text.ends_with(&format!("cpus={wanted}\n")),
        "the CPU count is measured: {:?}",
        manifest.serving.text
    );
    let mut options = BootOptions::new(image.clone());
    options.accel = AccelChoice::Tcg;
    options.mem_mib = 512;
    options.cpus = Some(vcpus);
    options.echo_serial = false;
    options.cache_dir = scratch().to_path_buf();
    options.ready_timeout = Some(Duration::from_secs(300));
    let appliance = Appliance::boot(&options).expect("the appliance boots on several vCPUs");
    let serial = std::fs::read_to_string(appliance.state_dir().join("serial.log"))
        .expect("the debug console's log");
    let smp_line = serial
        .lines()
        .find(|line| line.starts_with("smp: ") && line.contains("wanted online"))
        .unwrap_or_else(|| panic!("no bring-up report on the debug console:\n{serial}"));
    eprintln!("{smp_line}");
    for fragment in report {
        assert!(
            smp_line.contains(fragment),
            "the bring-up report must say {fragment:?}: {smp_line}"
        );
    }
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
                "{prompt:?}: the {vcpus}-vCPU appliance's greedy ids differ from cloister generate's"
            );
            let Ending::Done(done) = completion.ending else {
                panic!(
                    "{prompt:?}: the stream did not end with Done: {:?}",
                    completion.ending
                )
            };
            (other.join().expect("the attesting client"), done)
        });
        let (attested, done) = attested;
        eprintln!(
            "{prompt:?}: {} ids equal on {vcpus} vCPUs (in-image prefill {:.1} ms, decode {:.1} tok/s); a second \
             client attested in {:.1} s meanwhile",
            host.generated_ids.len(),
            done.prefill_us as f64 / 1e3,
            streams::tokens_per_second(&done),
            attested.as_secs_f64()
        );
    }
    drop(appliance);
}
