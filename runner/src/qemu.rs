//! The one place that builds the QEMU command line (docs/ARCHITECTURE.md §3), and the choice between KVM and TCG.
//!
//! The machine: q35, one CPU, no default devices, PVH boot of the kernel ELF with the model as the
//! initrd, a modern-only virtio-net NIC (virtio-drivers' `PciTransport` needs `disable-legacy=on`)
//! behind user networking that forwards one host port to the appliance port, and a TPM TIS device
//! backed by swtpm over its unixio control socket.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tools;

/// The appliance's port inside the guest.
pub const GUEST_PORT: u16 = net::proto::APPLIANCE_PORT;

/// The CPU model under TCG: everything QEMU emulates except AVX. TCG emulates AVX2 instruction by instruction
/// in helpers and is several times slower at it than at SSE (measured here: SmolLM2 decode 0.08 tokens/s with
/// AVX2, 0.56 without), so the engine's run-time dispatch then picks its portable kernels. Under KVM the guest
/// gets the host's CPU and its AVX2 kernels.
pub const TCG_CPU: &str = "max,avx=off,avx2=off,fma=off,f16c=off";

/// Guest memory unless `--mem` says otherwise.
pub const DEFAULT_MEM_MIB: u32 = 1024;

/// What `--accel` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when the host CPU has VMX or SVM and /dev/kvm opens read-write, else TCG.
    #[default]
    Auto,
    /// QEMU's software emulator (slow, works everywhere).
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

/// The accelerator QEMU is started with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    /// The name QEMU uses, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// Decides the accelerator from `--accel`, the host's /proc/cpuinfo and whether /dev/kvm opened.
///
/// KVM is only picked automatically when both hold: this machine's /dev/kvm exists and opens, but
/// without VMX/SVM a freestanding guest dies at its first SSE instruction (docs/ARCHITECTURE.md §3). An explicit
/// `--accel kvm` is obeyed.
pub fn choose_accel(choice: AccelChoice, cpuinfo: &str, kvm_opens: bool) -> Accel {
    match choice {
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Auto if kvm_opens && cpu_has_virtualization(cpuinfo) => Accel::Kvm,
        AccelChoice::Auto => Accel::Tcg,
    }
}

/// True when some `flags` line of /proc/cpuinfo lists `vmx` (Intel VT-x) or `svm` (AMD-V).
fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo.lines().any(|line| {
        let Some((key, value)) = line.split_once(':') else {
            return false;
        };
        key.trim() == "flags"
            && value
                .split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm")
    })
}

/// [`choose_accel`] on this host.
pub fn detect_accel(choice: AccelChoice) -> Accel {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    choose_accel(choice, &cpuinfo, kvm_opens)
}

/// Everything that varies between QEMU runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuConfig {
    /// The kernel ELF (PVH entry note).
    pub kernel: PathBuf,
    /// The model blob, passed as the initrd module.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    pub mem_mib: u32,
    /// Virtual CPUs (`-smp`); the image's `cpus=` key says how many the kernel uses.
    pub cpus: u32,
    pub accel: Accel,
    /// The host port on 127.0.0.1 forwarded to [`GUEST_PORT`].
    pub host_port: u16,
    /// swtpm's unixio control socket.
    pub swtpm_socket: PathBuf,
    /// Where COM1 output goes (empty for a release image).
    pub serial_log: PathBuf,
    /// Boot through UEFI firmware from a disk instead of loading the kernel directly.
    pub firmware: Option<Firmware>,
}

/// The UEFI boot: OVMF in two flash devices, and the GPT disk on virtio-blk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firmware {
    /// OVMF's code, mapped read-only.
    pub code: PathBuf,
    /// This run's private copy of OVMF's variable store.
    pub vars: PathBuf,
    /// The disk image, attached read-only.
    pub disk: PathBuf,
}

/// The vCPUs `cloister up` and `cloister build` give an image by default: the host's cores, at most 4 (beyond that
/// the engine's per-product fork/join outweighs the gain for the small models this runs, and under TCG each
/// vCPU is a host thread).
pub fn default_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |cores| cores.get().min(4) as u32)
}

impl QemuConfig {
    /// The arguments after the program name, in order.
    pub fn args(&self) -> Vec<OsString> {
        let cpu = match self.accel {
            Accel::Tcg => TCG_CPU,
            Accel::Kvm => "host",
        };
        let netdev = format!(
            "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:{GUEST_PORT}",
            self.host_port
        );
        let boot: Vec<(&str, OsString)> = match &self.firmware {
            None => vec![
                ("-kernel", self.kernel.clone().into()),
                ("-initrd", self.initrd.clone().into()),
                ("-append", self.cmdline.clone().into()),
            ],
            // The firmware boots EFI/BOOT/BOOTX64.EFI from the disk's EFI system partition.
            Some(firmware) => vec![
                (
                    "-drive",
                    join(
                        "if=pflash,format=raw,unit=0,readonly=on,file=",
                        &firmware.code,
                    ),
                ),
                (
                    "-drive",
                    join("if=pflash,format=raw,unit=1,file=", &firmware.vars),
                ),
                (
                    "-drive",
                    join(
                        "if=none,id=disk0,format=raw,readonly=on,file=",
                        &firmware.disk,
                    ),
                ),
                ("-device", "virtio-blk-pci,drive=disk0,bootindex=1".into()),
            ],
        };
        // Several vCPUs under TCG run on as many host threads only with multi-threaded TCG.
        let accel = match (self.accel, self.cpus) {
            (Accel::Tcg, cpus) if cpus > 1 => "tcg,thread=multi".into(),
            (accel, _) => accel.name().to_string(),
        };
        let machine: [(&str, OsString); 6] = [
            ("-machine", "q35".into()),
            ("-accel", accel.into()),
            ("-cpu", cpu.into()),
            ("-smp", self.cpus.max(1).to_string().into()),
            ("-m", self.mem_mib.to_string().into()),
            ("-display", "none".into()),
        ];
        let devices: [(&str, OsString); 6] = [
            ("-netdev", netdev.into()),
            (
                "-device",
                // No option ROM: the appliance never network-boots, and QEMU then needs no iPXE ROM file.
                "virtio-net-pci,netdev=net0,disable-legacy=on,romfile=".into(),
            ),
            (
                "-chardev",
                join("socket,id=chrtpm,path=", &self.swtpm_socket),
            ),
            ("-tpmdev", "emulator,id=tpm0,chardev=chrtpm".into()),
            ("-device", "tpm-tis,tpmdev=tpm0".into()),
            ("-serial", join("file:", &self.serial_log)),
        ];
        // No default devices (no e1000, no VGA), and a guest reset ends QEMU instead of rebooting.
        let mut args: Vec<OsString> = vec!["-nodefaults".into(), "-no-reboot".into()];
        for (flag, value) in machine.into_iter().chain(boot).chain(devices) {
            args.push(flag.into());
            args.push(value);
        }
        args
    }

    /// The command that starts QEMU with [`QemuConfig::args`].
    pub fn command(&self) -> Command {
        let mut command = Command::new(tools::QEMU.program);
        command.args(self.args());
        command
    }
}

fn join(prefix: &str, path: &Path) -> OsString {
    let mut joined = OsString::from(prefix);
    joined.push(path.as_os_str());
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(accel: Accel) -> QemuConfig {
        QemuConfig {
            kernel: "/out/kernel.elf".into(),
            initrd: "/out/model.gguf".into(),
            cmdline: "ip=dhcp port=7000".into(),
            mem_mib: 1024,
            cpus: 1,
            accel,
            host_port: 7123,
            swtpm_socket: "/run/state/swtpm.sock".into(),
            serial_log: "/run/state/serial.log".into(),
            firmware: None,
        }
    }

    #[test]
    fn tcg_command_line_is_exact() {
        let args: Vec<String> = config(Accel::Tcg)
            .args()
            .into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect();
        let expected = "-nodefaults -no-reboot -machine q35 -accel tcg -cpu max,avx=off,avx2=off,fma=off,f16c=off -smp 1 -m 1024 \
            -display none -kernel /out/kernel.elf -initrd /out/model.gguf -append |ip=dhcp port=7000| \
            -netdev user,id=net0,hostfwd=tcp:127.0.0.1:7123-:7000 \
            -device virtio-net-pci,netdev=net0,disable-legacy=on,romfile= \
            -chardev socket,id=chrtpm,path=/run/state/swtpm.sock \
            -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0 \
            -serial file:/run/state/serial.log";
        // The command line stays one argument: QEMU is not started through a shell.
        let joined = args
            .iter()
            .map(|arg| {
                if arg.contains(' ') {
                    format!("|{arg}|")
                } else {
                    arg.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(joined, expected);
        assert_eq!(
            config(Accel::Tcg).command().get_program(),
            "qemu-system-x86_64"
        );
    }

    #[test]
    fn several_cpus_use_multi_threaded_tcg() {
        let mut config = config(Accel::Tcg);
        config.cpus = 4;
        let args = config.args();
        let value = |flag: &str| {
            let position = args.iter().position(|arg| arg == flag).unwrap();
            args[position + 1].clone()
        };
        assert_eq!(value("-smp"), "4");
        assert_eq!(value("-accel"), "tcg,thread=multi");
        config.accel = Accel::Kvm;
        let args = config.args();
        let position = args.iter().position(|arg| arg == "-accel").unwrap();
        assert_eq!(args[position + 1], "kvm");
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let args: Vec<OsString> = config(Accel::Kvm).args();
        let position = args.iter().position(|arg| arg == "-accel").unwrap();
        assert_eq!(args[position + 1], "kvm");
        let position = args.iter().position(|arg| arg == "-cpu").unwrap();
        assert_eq!(args[position + 1], "host");
        assert_eq!(args.iter().filter(|arg| *arg == "-cpu").count(), 1);
    }

    #[test]
    fn accel_choice() {
        let vmx = "processor\t: 0\nflags\t\t: fpu vme sse2 vmx avx2\n";
        let svm = "flags\t\t: fpu svm\n";
        let none = "flags\t\t: fpu sse2 avx2 hypervisor\nvmx flags\t: ept\n";
        assert_eq!(choose_accel(AccelChoice::Auto, vmx, true), Accel::Kvm);
        assert_eq!(choose_accel(AccelChoice::Auto, svm, true), Accel::Kvm);
        // /dev/kvm opens but the CPU advertises nothing: this machine's case (docs/ARCHITECTURE.md §3).
        assert_eq!(choose_accel(AccelChoice::Auto, none, true), Accel::Tcg);
        assert_eq!(choose_accel(AccelChoice::Auto, vmx, false), Accel::Tcg);
        assert_eq!(choose_accel(AccelChoice::Auto, "", false), Accel::Tcg);
        assert_eq!(choose_accel(AccelChoice::Tcg, vmx, true), Accel::Tcg);
        assert_eq!(choose_accel(AccelChoice::Kvm, none, false), Accel::Kvm);
    }
}
