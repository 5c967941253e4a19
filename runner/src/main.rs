//! `cargo run` starts this: the runner's command line (build, up, info, verify, chat, fetch-model, generate,
//! bench).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use client::manifest::{BootMode, Manifest};
use client::session::UnverifiedSession;
use client::verify::{self, VerifyOptions};
use net::proto::ModelInfo;
use net::proto::{GenerateRequest, Sampling};
use runner::{
    chat, engine, image, models, qemu, Appliance, BootOptions, BuildOptions, KernelFlavor,
};

/// cloister: an attested LLM inference appliance booted under QEMU with a software TPM.
///
/// Without a subcommand, `up` runs with its defaults.
#[derive(Parser, Debug)]
#[command(
    name = "cloister",
    version,
    after_help = runner::json_output::EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options of `up`, for running without a subcommand.
    #[command(flatten)]
    up: UpArgs,
    /// No progress bars or progress lines on stderr (errors still print). Bars are drawn only when stderr is a
    /// terminal.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build the kernel and write the image directory (kernel.elf, model.gguf, cmdline, manifest.json).
    Build(BuildArgs),
    /// Build, boot under QEMU + swtpm, print the endpoint, and serve until Ctrl-C or SIGTERM.
    Up(UpArgs),
    /// Ask a running appliance for its model information and print it as JSON.
    Info(InfoArgs),
    /// Attest a running appliance against an image manifest over TLS: fresh quote bound to the TLS
    /// session, EK certificate chain, credential activation, PCR and event-log replay. Exits non-zero
    /// naming the failed check.
    Verify(runner::verify::VerifyArgs),
    /// Verify the appliance as `verify` does, then send PROMPT on that verified TLS session and stream
    /// the answer. Ctrl-C cancels the generation.
    Chat(runner::chat::ChatArgs),
    /// Serve the OpenAI API on 127.0.0.1:8080, forwarding each request only on a TLS session whose appliance
    /// passed verification against the manifest (README, "Using the OpenAI API"). Runs until Ctrl-C or SIGTERM.
    Gateway(gateway::GatewayArgs),
    /// Fetch named models into the cache (sha256-checked).
    FetchModel(FetchModelArgs),
    /// Generate text on the host with the inference engine (no VM).
    Generate(engine::GenerateArgs),
    /// Measure the inference engine's prefill and decode speed on the host.
    Bench(engine::BenchArgs),
    /// Check that everything `up` and the tests need is installed, and say what to install or change.
    /// Exits non-zero when something `up` needs is missing.
    Doctor(DoctorArgs),
    /// Print a shell completion script (e.g. `cloister completions bash > /etc/bash_completion.d/cloister`).
    Completions(CompletionsArgs),
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Check for this boot mode (uefi needs OVMF and the disk tools).
    #[arg(long, default_value_t = runner::uefi::BootMode::Uefi)]
    boot: runner::uefi::BootMode,
    /// Print the checks as one JSON array.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

/// The exit code for an error: what its chain of causes says happened (README, "Exit codes").
fn exit_code(error: &anyhow::Error) -> u8 {
    runner::json_output::Failure::of(error).exit_code()
}

fn doctor(args: &DoctorArgs) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let checks = runner::doctor::run_checks(&path, args.boot, &runner::workspace::cache_dir());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{}", runner::doctor::render(&checks));
    }
    if runner::doctor::all_required_ok(&checks) {
        Ok(())
    } else {
        anyhow::bail!("something `cloister up` needs is missing (see above)")
    }
}

fn completions(args: &CompletionsArgs) -> Result<()> {
    use clap::CommandFactory;
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "cloister", &mut std::io::stdout());
    Ok(())
}

#[derive(Args, Debug, Clone)]
struct ImageArgs {
    /// A model name (smollm2, gemma3, tiny-llama, tiny-llama3, tiny-gemma3, tiny-qwen2, tiny-qwen3) or the path of a model file.
    #[arg(long, default_value = models::DEFAULT_MODEL)]
    model: String,
    /// Build the kernel with a COM1 console and log output (never for release).
    #[arg(long)]
    debug_console: bool,
    /// How the image boots: uefi (OVMF measures the boot application into PCR 4 before it runs)
    /// or direct (QEMU loads the kernel itself; nothing measures it first).
    #[arg(long, default_value_t = runner::uefi::BootMode::Uefi)]
    boot: runner::uefi::BootMode,
    /// Processors the appliance runs the engine on: QEMU's -smp (multi-threaded under TCG), written into the
    /// image's command line as cpus=N and so measured with the serving parameters [default: the host's cores,
    /// at most 4]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(net::serving::MAX_CPUS)))]
    cpus: Option<u32>,
}

#[derive(Args, Debug)]
struct BuildArgs {
    #[command(flatten)]
    image: ImageArgs,
    /// Output directory [default: <workspace>/target/cloister]
    #[arg(long)]
    out: Option<PathBuf>,
    /// The disk image's form besides disk.img: raw (only disk.img), qcow2 (disk.qcow2) or gce (disk.tar.gz
    /// holding disk.raw, for `gcloud compute images create`). UEFI images only.
    #[arg(long, value_enum, default_value_t = runner::cloud_image::DiskFormat::Raw)]
    format: runner::cloud_image::DiskFormat,
}

#[derive(Args, Debug)]
struct UpArgs {
    #[command(flatten)]
    image: ImageArgs,
    /// Host port on 127.0.0.1 forwarded to the appliance; 0 picks a free port.
    #[arg(long, default_value_t = net::proto::APPLIANCE_PORT)]
    port: u16,
    /// Accelerator: auto uses KVM only when the CPU has VMX/SVM and /dev/kvm opens.
    #[arg(long, value_enum, default_value_t = qemu::AccelChoice::Auto)]
    accel: qemu::AccelChoice,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = qemu::DEFAULT_MEM_MIB)]
    mem: u32,
    /// Seconds to wait for the appliance's first answer [default: 300 under TCG, 60 under KVM]
    #[arg(long)]
    ready_timeout: Option<u64>,
    /// The prompt `up` sends (as a chat turn) once the appliance is verified.
    #[arg(long, default_value = DEMO_PROMPT)]
    demo_prompt: String,
    /// Tokens the demo prompt generates at most (greedy); 0 sends no demo prompt.
    #[arg(long, default_value_t = 24)]
    demo_max_tokens: u32,
}

/// How long `up`'s demo waits for each frame under TCG.
const DEMO_TCG_TIMEOUT: Duration = Duration::from_secs(300);

/// What `up` asks the appliance once it is verified.
const DEMO_PROMPT: &str =
    "In one sentence: why should I verify a server before I send it a secret?";

#[derive(Args, Debug)]
struct InfoArgs {
    /// The appliance's address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7000")]
    endpoint: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Args, Debug)]
struct FetchModelArgs {
    /// Model names: smollm2, gemma3 (downloaded), or tiny-llama, tiny-llama3, tiny-gemma3, tiny-qwen2, tiny-qwen3 (generated).
    #[arg(required = true)]
    names: Vec<String>,
}

/// Parses the command line. `up`'s options also work without a subcommand (`cloister --cpus 2`), so they may not
/// come before another one (`cloister --cpus 2 build` would ignore them); `--quiet` may go anywhere.
fn parse_cli<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(args)?;
    if let Some((name, _)) = matches.subcommand() {
        let before = matches.ids().find(|id| {
            id.as_str() != "quiet"
                && matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
        });
        if let Some(id) = before {
            let option = id.as_str().replace('_', "-");
            return Err(command.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("--{option} is an option of `up`: put it after `up`, not before `{name}`"),
            ));
        }
    }
    Cli::from_arg_matches(&matches).map_err(|error| error.format(&mut command))
}

fn main() -> ExitCode {
    let cli = match parse_cli(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    runner::progress::set_quiet(cli.quiet);
    let result = match cli.command.unwrap_or(Command::Up(cli.up)) {
        Command::Build(args) => build(args),
        Command::Up(args) => up(args),
        Command::Info(args) => info(args),
        Command::Verify(args) => runner::verify::run(args),
        Command::Chat(args) => chat(&args),
        Command::Gateway(args) => runner::verify::trust_anchors(&args.ek_ca).and_then(|trust| {
            let observations = runner::verify::observation_store(args.observations.as_deref());
            gateway::run(&args, trust, observations)
        }),
        Command::FetchModel(args) => fetch_model(args),
        Command::Generate(args) => engine::generate(args),
        Command::Bench(args) => engine::bench(args),
        Command::Doctor(args) => doctor(&args),
        Command::Completions(args) => completions(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The message chain, without the backtrace anyhow's Debug output would add.
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(exit_code(&error))
        }
    }
}

fn build_options(image: &ImageArgs, out: Option<PathBuf>) -> BuildOptions {
    let defaults = BuildOptions::default();
    BuildOptions {
        model: image.model.clone(),
        out: out.unwrap_or(defaults.out),
        flavor: KernelFlavor {
            debug_console: image.debug_console,
            sabotage: image::Sabotage::None,
        },
        cmdline: image::with_cpus(
            &defaults.cmdline,
            image.cpus.unwrap_or_else(qemu::default_cpus),
        ),
        boot: image.boot,
    }
}

fn build(args: BuildArgs) -> Result<()> {
    let image = image::build(&build_options(&args.image, args.out))?;
    if args.format != runner::cloud_image::DiskFormat::Raw {
        let Some(uefi) = &image.uefi else {
            anyhow::bail!(
                "--format {} needs a UEFI image: build without --boot direct",
                args.format.name()
            );
        };
        let written = runner::cloud_image::write(args.format, &uefi.disk, &image.dir)?;
        eprintln!("wrote {}", written.display());
    }
    println!("{}", image.dir.display());
    Ok(())
}

/// A flag the Ctrl-C/SIGTERM handler sets (it can be installed once per process).
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::Release))
        .context("cannot install the Ctrl-C/SIGTERM handler")?;
    Ok(stop)
}

fn up(args: UpArgs) -> Result<()> {
    // Say what to install before spending minutes on a build: the same checks as `cloister doctor`.
    runner::doctor::require_for_up(args.image.boot, &runner::workspace::cache_dir())?;
    // Install the handler first, so a Ctrl-C during the slow boot also stops QEMU and swtpm cleanly.
    let stop = interrupt_flag()?;
    let image = image::build(&build_options(&args.image, None))?;
    let manifest_path = image.dir.join(client::manifest::MANIFEST_FILE);
    let mut options = BootOptions::new(image);
    options.port = args.port;
    options.accel = args.accel;
    options.mem_mib = args.mem;
    options.ready_timeout = args.ready_timeout.map(Duration::from_secs);
    options.interrupt = Some(Arc::clone(&stop));
    let mut appliance = Appliance::boot(&options)?;
    println!(
        "cloister is up at {} (booted in {:.2} s)",
        appliance.endpoint(),
        appliance.boot_duration().as_secs_f64()
    );
    let attested = attest_and_demo(&appliance, &manifest_path, &args, &stop);
    if let Err(error) = attested {
        eprintln!("stopping QEMU and swtpm...");
        appliance.shutdown()?;
        return Err(error);
    }
    println!(
        "chat with it from another terminal (each run verifies the appliance before it sends the prompt; from the \
         checkout, `cargo run --release --` stands for `cloister`):"
    );
    let written = Manifest::read(&manifest_path).ok();
    let mut flags = String::new();
    if written.as_ref().map(|manifest| manifest.boot) == Some(BootMode::Direct) {
        flags.push_str(" --trust-host");
    }
    if written.is_some_and(|manifest| manifest.console) {
        flags.push_str(" --allow-debug-image");
    }
    println!(
        "  cloister chat --endpoint {} --manifest {}{flags} \"Why is the sky blue?\"",
        appliance.endpoint(),
        manifest_path.display()
    );
    println!(
        "  cloister verify --endpoint {} --manifest {}{flags}",
        appliance.endpoint(),
        manifest_path.display()
    );
    eprintln!("serving until Ctrl-C or SIGTERM");
    // The handler only sets a flag; checking it (and QEMU) a few times a second is cheap.
    while !stop.load(Ordering::Acquire) {
        appliance.ensure_running()?;
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("stopping QEMU and swtpm...");
    appliance.shutdown()
}

/// `up`'s first client: verifies the fresh appliance against its manifest over TLS, prints a short report, then
/// sends the demo prompt on that verified session and streams the answer.
fn attest_and_demo(
    appliance: &Appliance,
    manifest_path: &Path,
    args: &UpArgs,
    stop: &AtomicBool,
) -> Result<()> {
    let manifest = Manifest::read(manifest_path)?;
    let trust = appliance.certificate_authority().trust_anchors()?;
    eprintln!(
        "attesting over TLS (fresh nonce, quote bound to the session, credential activation)..."
    );
    // Under TCG one prefill chunk of SmolLM2 takes tens of seconds, during which nothing arrives: the session's
    // read timeout must outlast it (the same default as `cloister chat --timeout`).
    let timeout = match appliance.accel() {
        qemu::Accel::Tcg => DEMO_TCG_TIMEOUT,
        qemu::Accel::Kvm => verify::DEFAULT_TIMEOUT,
    };
    // The direct dev path has no measurement below the kernel: this runner booted it on its own host, so it
    // trusts that host for its own demo, and says so (docs/ARCHITECTURE.md §4, "Roots of trust").
    let trust_host = manifest.boot == BootMode::Direct;
    if trust_host {
        eprintln!(
            "direct boot: nothing measured the kernel before it ran; this demo trusts the host operator (--trust-host)"
        );
    }
    // Likewise a debug-console image it built on request (`up --debug-console`).
    let allow_debug_image = manifest.console;
    if allow_debug_image {
        eprintln!("debug-console image: this demo accepts it (--allow-debug-image)");
    }
    let options = VerifyOptions {
        trust_host,
        allow_debug_image,
        ..VerifyOptions::default()
    };
    let session = UnverifiedSession::connect(appliance.endpoint(), timeout)?;
    let (mut session, report) = session
        .verify(&manifest, &trust, &options)
        .context("the appliance cloister just booted failed verification")?;
    print!("{}", report.short());
    if args.demo_max_tokens == 0 || stop.load(Ordering::Acquire) {
        return Ok(());
    }
    let request = GenerateRequest {
        prompt: chat::prompt(&args.demo_prompt, false),
        max_tokens: args.demo_max_tokens,
        sampling: Sampling::GREEDY,
        stop: Vec::new(),
    };
    println!();
    println!(
        "demo prompt (greedy, at most {} tokens): {}",
        args.demo_max_tokens, args.demo_prompt
    );
    // Generation on a TCG guest is slow; the first token can take a while (the prompt is prefilled first).
    eprintln!("waiting for the first token...");
    match chat::stream_to_stdout(&mut session, request.clone(), stop) {
        Ok(completion) => println!("{}", chat::usage_line(&completion, request.sampling)),
        // The appliance keeps serving other clients; say what went wrong and carry on.
        Err(error) => eprintln!("the demo prompt failed: {error:#}"),
    }
    println!();
    Ok(())
}

fn chat(args: &runner::chat::ChatArgs) -> Result<()> {
    let stop = interrupt_flag()?;
    chat::run(args, &stop)
}

fn info(args: InfoArgs) -> Result<()> {
    let endpoint = client::resolve_endpoint(&args.endpoint)?;
    let info =
        client::model_info(endpoint, Duration::from_secs(args.timeout)).with_context(|| {
            format!("no model information from {endpoint}; is `cloister up` running?")
        })?;
    println!("{}", model_info_json(&info));
    Ok(())
}

/// Model information as the JSON object `cloister info` prints (one line, no spaces).
fn model_info_json(info: &ModelInfo) -> String {
    serde_json::json!({
        "length": info.length,
        "sha256": client::hex(&info.sha256),
    })
    .to_string()
}

fn fetch_model(args: FetchModelArgs) -> Result<()> {
    let cache = runner::workspace::cache_dir();
    for name in &args.names {
        if models::GENERATED_MODELS
            .iter()
            .any(|(generated, _)| generated == name)
        {
            println!("{}", models::resolve_in(name, &cache)?.display());
            continue;
        }
        let model = models::known(name).with_context(|| {
            let names: Vec<&str> = models::KNOWN_MODELS
                .iter()
                .map(|model| model.name)
                .collect();
            format!(
                "unknown model {name}; fetch-model knows {}",
                names.join(", ")
            )
        })?;
        let path = models::fetch(model, &cache)?;
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner::json_output;

    #[test]
    fn exit_codes_tell_verification_refusal_from_appliance_refusal_from_runtime_errors() {
        let refused = anyhow::Error::new(client::verify::VerifyError::BadSignature)
            .context("verification of 127.0.0.1:7000 failed");
        assert_eq!(exit_code(&refused), json_output::EXIT_VERIFICATION_REFUSED);
        let busy = anyhow::Error::new(client::session::ApplianceError(net::proto::ErrorCode::Busy))
            .context("the appliance refused the request");
        assert_eq!(exit_code(&busy), json_output::EXIT_APPLIANCE_REFUSED);
        let io = anyhow::anyhow!("connection refused");
        assert_eq!(exit_code(&io), json_output::EXIT_RUNTIME);
    }
    use clap::CommandFactory;

    #[test]
    fn quiet_goes_anywhere_and_up_options_not_before_another_subcommand() {
        for args in [
            &["cloister", "doctor", "--quiet"][..],
            &["cloister", "--quiet"],
            &["cloister", "--quiet", "build"],
            &["cloister", "--quiet", "up", "--cpus", "2"],
            &["cloister", "bench", "--json", "--quiet"],
        ] {
            let cli = parse_cli(args).unwrap();
            assert!(cli.quiet, "{args:?}");
        }
        assert!(!parse_cli(["cloister", "doctor"]).unwrap().quiet);
        assert_eq!(
            parse_cli(["cloister", "--cpus", "2"])
                .unwrap()
                .up
                .image
                .cpus,
            Some(2)
        );
        for args in [
            &["cloister", "--cpus", "2", "build"][..],
            &["cloister", "--debug-console", "doctor"],
        ] {
            let error = parse_cli(args).expect_err("refused");
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{args:?}"
            );
            assert!(
                error.to_string().contains("is an option of `up`"),
                "{error}"
            );
        }
    }

    #[test]
    fn help_lists_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("3  verification refused"), "{help}");
        assert!(
            help.contains("4  the appliance refused the request"),
            "{help}"
        );
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_means_up_with_its_defaults() {
        let cli = Cli::try_parse_from(["runner"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.up.port, 7000);
        assert_eq!(cli.up.image.model, "smollm2");
        assert_eq!(cli.up.accel, qemu::AccelChoice::Auto);
        assert_eq!(cli.up.mem, 1024);
        assert_eq!(cli.up.image.boot, runner::uefi::BootMode::Uefi);

        let cli = Cli::try_parse_from([
            "runner", "--model", "/m.gguf", "--port", "0", "--accel", "tcg",
        ])
        .unwrap();
        assert_eq!((cli.up.image.model.as_str(), cli.up.port), ("/m.gguf", 0));
        assert_eq!(cli.up.accel, qemu::AccelChoice::Tcg);
    }

    #[test]
    fn subcommands_parse() {
        let cli = Cli::try_parse_from(["runner", "up", "--debug-console", "--mem", "512"]).unwrap();
        let Some(Command::Up(up)) = cli.command else {
            panic!("not up")
        };
        assert!(up.image.debug_console);
        assert_eq!(up.mem, 512);
        assert_eq!(up.image.cpus, None);

        let cli = Cli::try_parse_from(["runner", "up", "--cpus", "2"]).unwrap();
        let Some(Command::Up(up)) = cli.command else {
            panic!("not up")
        };
        assert_eq!(up.image.cpus, Some(2));
        let options = build_options(&up.image, None);
        assert_eq!(options.cmdline, "ip=dhcp port=7000 cpus=2");
        assert_eq!(runner::appliance::image_cpus(&options.cmdline), 2);
        assert!(Cli::try_parse_from(["runner", "up", "--cpus", "0"]).is_err());
        assert!(Cli::try_parse_from(["runner", "up", "--cpus", "17"]).is_err());

        let cli = Cli::try_parse_from(["runner", "build", "--out", "/tmp/x"]).unwrap();
        let Some(Command::Build(build)) = cli.command else {
            panic!("not build")
        };
        assert_eq!(build.out, Some(PathBuf::from("/tmp/x")));

        let cli = Cli::try_parse_from(["runner", "info", "--endpoint", "127.0.0.1:7001"]).unwrap();
        let Some(Command::Info(info)) = cli.command else {
            panic!("not info")
        };
        assert_eq!(info.endpoint, "127.0.0.1:7001");

        let cli = Cli::try_parse_from([
            "runner",
            "chat",
            "--manifest",
            "/m.json",
            "--max-tokens",
            "7",
            "--temperature",
            "0.5",
            "--seed",
            "9",
            "--top-k",
            "40",
            "--top-p",
            "0.9",
            "--stop",
            "END",
            "--stop",
            "\n\n",
            "--raw",
            "Hi there",
        ])
        .unwrap();
        let Some(Command::Chat(chat)) = cli.command else {
            panic!("not chat")
        };
        assert_eq!(chat.endpoint, "127.0.0.1:7000");
        let request = chat.request().unwrap();
        assert_eq!(request.prompt, net::proto::Prompt::Text("Hi there".into()));
        assert_eq!(request.max_tokens, 7);
        assert_eq!(
            request.sampling,
            Sampling {
                temperature: 0.5,
                top_k: 40,
                top_p: 0.9,
                seed: 9
            }
        );
        assert_eq!(request.stop, ["END", "\n\n"]);

        let cli =
            Cli::try_parse_from(["runner", "chat", "--manifest", "/m.json", "Hello"]).unwrap();
        let Some(Command::Chat(chat)) = cli.command else {
            panic!("not chat")
        };
        let request = chat.request().unwrap();
        assert_eq!(
            request.prompt,
            net::proto::Prompt::Chat(vec![net::proto::ChatMessage {
                role: net::proto::Role::User,
                content: "Hello".into()
            }])
        );
        assert_eq!(request.sampling.temperature, 0.0);
        assert!(
            Cli::try_parse_from(["runner", "chat", "--manifest", "/m.json"]).is_err(),
            "a prompt is required"
        );
        let cli = Cli::try_parse_from(["runner", "chat", "--manifest", "/m", "--top-p", "0", "x"])
            .unwrap();
        let Some(Command::Chat(chat)) = cli.command else {
            panic!("not chat")
        };
        assert!(chat.request().is_err(), "top-p 0 is refused");

        assert!(
            Cli::try_parse_from(["runner", "fetch-model"]).is_err(),
            "a name is required"
        );
        assert!(Cli::try_parse_from(["runner", "--accel", "fast"]).is_err());
    }

    #[test]
    fn info_prints_model_information_as_one_json_line() {
        let info = ModelInfo {
            length: 98_362_432,
            sha256: [0x5a; 32],
        };
        assert_eq!(
            model_info_json(&info),
            format!("{{\"length\":98362432,\"sha256\":\"{}\"}}", "5a".repeat(32))
        );
    }
}
