//! `cloister verify` end to end: the release kernel booted under QEMU (TCG) + swtpm by the runner's library,
//! verified over TLS against the manifest of its image with the runner's CA; the exported evidence checked by
//! tpm2_checkquote; a prompt answered on a verified session; and the same kernel booted with another model
//! fails on the model measurement (issues 3 and 5).
//!
//! Needs qemu-system-x86, swtpm, swtpm-tools and tpm2-tools; a missing tool fails the test (it is not skipped).

use std::path::Path;
use std::time::Duration;

use client::manifest::{Manifest, MANIFEST_FILE};
use client::session::{Ending, RequestKind, UnverifiedSession};
use client::verify::{ManifestItem, VerifyError, VerifyOptions};
use client::verify_appliance;
use net::proto::{GenerateRequest, Prompt, Sampling};
use runner::{image, tools, Appliance, BootOptions, Image, KernelFlavor};

fn image_with_model(kernel: &Path, scratch: &Path, name: &str, seed: u64) -> Image {
    // A model the kernel's engine loads (it serves no other): the generated tiny llama, weights from `seed`.
    let model = scratch.join(format!("{name}.gguf"));
    std::fs::write(
        &model,
        model::tiny::generate(&model::tiny::TinySpec::llama(), seed),
    )
    .unwrap();
    image::assemble(
        kernel,
        &model,
        image::DEFAULT_CMDLINE,
        &scratch.join(name),
        KernelFlavor::default(),
    )
    .unwrap()
}

fn boot(image: Image, cache: &Path) -> Appliance {
    let mut options = BootOptions::new(image);
    options.cache_dir = cache.to_path_buf();
    options.ready_timeout = Some(Duration::from_secs(120));
    Appliance::boot(&options).unwrap()
}

#[test]
fn booted_appliance_verifies_and_another_model_fails_on_the_model() {
    tools::require(&tools::BOOT_TOOLS).unwrap();
    let checkquote_found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("tpm2_checkquote").is_file()))
        .unwrap_or(false);
    assert!(
        checkquote_found,
        "tpm2_checkquote is required: install the Debian package `tpm2-tools`"
    );
    let scratch = tempfile::tempdir().unwrap();
    let kernel = image::build_kernel(KernelFlavor::default()).unwrap();

    // The manifest `cloister build` writes beside the image.
    let image = image_with_model(&kernel, scratch.path(), "honest", 11);
    let manifest_path = image.dir.join(MANIFEST_FILE);
    Manifest::for_image(&image.kernel, &image.model, &image.cmdline)
        .unwrap()
        .write(&manifest_path)
        .unwrap();
    let manifest = Manifest::read(&manifest_path).unwrap();

    let appliance = boot(image, scratch.path());
    let trust = appliance.certificate_authority().trust_anchors().unwrap();
    let export = scratch.path().join("evidence");
    let options = VerifyOptions {
        export_evidence: Some(export.clone()),
        trust_host: true,
        ..VerifyOptions::default()
    };
    let report = verify_appliance(appliance.endpoint(), &manifest, &trust, &options)
        .unwrap_or_else(|error| {
            // Show what the appliance measured next to what the manifest expects.
            let log = std::fs::read(export.join("cloister-eventlog.bin")).unwrap_or_default();
            let measured: Vec<String> = tpm::eventlog::EventLog::parse(&log)
                .map(|log| {
                    log.events()
                        .map(|event| {
                            format!("PCR {} {}", event.pcr(), runner::models::hex(event.digest()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            panic!(
                "the honest appliance failed verification: {error:#}\nmeasured: {measured:#?}\nmanifest: {}",
                String::from_utf8_lossy(&manifest.to_json())
            )
        });
    eprintln!("{report}");
    assert_eq!(report.events.len(), 5);
    assert_eq!(report.pcrs.len(), 11);

    // verify_appliance exported the evidence before checking it; tpm2_checkquote reads the same files.
    let line = std::fs::read_to_string(export.join("checkquote.txt")).unwrap();
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(line.trim())
        .current_dir(&export)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tpm2_checkquote rejected the appliance's quote: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // A verified session is the one place a prompt can go: generate a few greedy tokens on it.
    let session =
        UnverifiedSession::connect(appliance.endpoint(), Duration::from_secs(120)).unwrap();
    let transcript = session.transcript();
    let (mut session, _) = session
        .verify(
            &manifest,
            &trust,
            &VerifyOptions {
                trust_host: true,
                ..VerifyOptions::default()
            },
        )
        .unwrap();
    let request = GenerateRequest {
        prompt: Prompt::Text("hello".to_string()),
        max_tokens: 3,
        sampling: Sampling::GREEDY,
        stop: Vec::new(),
    };
    let completion = session.complete(request, None, |_| {}).unwrap();
    let Ending::Done(done) = completion.ending else {
        panic!("the generation was cancelled")
    };
    assert_eq!(done.generated_tokens as usize, completion.tokens.len());
    assert!(!completion.tokens.is_empty());
    assert_eq!(
        transcript.kinds(),
        [
            RequestKind::Attest,
            RequestKind::ActivateCredential,
            RequestKind::Generate
        ]
    );
    drop(session);
    appliance.shutdown().unwrap();

    // The same kernel with another model, checked against the first image's manifest.
    let other = image_with_model(&kernel, scratch.path(), "other", 12);
    let appliance = boot(other, scratch.path());
    let error = verify_appliance(
        appliance.endpoint(),
        &manifest,
        &trust,
        &VerifyOptions {
            trust_host: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        error.downcast_ref::<VerifyError>(),
        Some(&VerifyError::ManifestMismatch {
            what: ManifestItem::Model
        }),
        "{error:#}"
    );
    appliance.shutdown().unwrap();
}
