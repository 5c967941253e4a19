//! The measurement contract: which of cloister's own boot measurements go into which PCR, in which order, with
//! which kind and description. The kernel extends exactly [`BootDigests::events`]; the verifier predicts the
//! same list from the manifest. It is written once, here, so the two sides cannot drift apart.
//!
//! PCRs 12-14 are ones that the PC Client firmware and boot loaders leave alone (TCG PC Client Platform Firmware
//! Profile, "PCR Usage": 8-15 are for the operating system) and that are not resettable (16 and 23 are, and are
//! never used). The whole chain, and what each PCR does and does not prove, is in docs/ARCHITECTURE.md
//! ("The measurement chain").

use crate::eventlog::{self, EventKind};

/// The PCR holding the file bytes of the kernel's loadable segments (text, rodata, then the initial data).
pub const KERNEL_PCR: u8 = 12;
/// The PCR holding the model blob and then the serving parameters.
pub const MODEL_PCR: u8 = 13;
/// The PCR holding the effective configuration and then the kernel command line.
pub const CONFIGURATION_PCR: u8 = 14;
/// cloister's own PCRs, lowest first.
pub const PCRS: [u8; 3] = [KERNEL_PCR, MODEL_PCR, CONFIGURATION_PCR];
/// How many events the kernel logs at boot.
pub const BOOT_EVENT_COUNT: usize = 5;
/// Most file bytes the kernel's writable loadable segment may hold. The kernel copies them at entry, before
/// anything writes them, into a buffer of this size on its stack, and measures the copy; the runner refuses to
/// describe a kernel whose ELF holds more (docs/ARCHITECTURE.md §4, "What is measured, and by whom").
pub const MAX_DATA_FILE_BYTES: usize = 4096;

/// The five SHA-256 digests the kernel measures before it opens a port. Each text is hashed as
/// `net::serving` writes it, so the kernel and the verifier hash the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootDigests {
    /// The file bytes of the kernel ELF's PT_LOAD segments in program-header order: text, rodata, then the
    /// writable segment's initial bytes (`.data`) as they were before the kernel's first write.
    pub kernel: [u8; 32],
    /// The model blob (the GGUF file).
    pub model: [u8; 32],
    /// The canonical serving-parameters text (context, sessions, prefill chunk).
    pub serving: [u8; 32],
    /// The canonical configuration text (address setup, port, limits, timeouts).
    pub configuration: [u8; 32],
    /// The kernel command line as the kernel received it.
    pub command_line: [u8; 32],
}

/// One event of the contract: what the kernel extends and logs, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// The PCR extended.
    pub pcr: u8,
    /// What was measured.
    pub kind: EventKind,
    /// The digest extended.
    pub digest: [u8; 32],
    /// The description logged with it (printable ASCII, at most [`eventlog::MAX_DESCRIPTION`] bytes).
    pub description: &'static str,
}

impl BootDigests {
    /// The boot events in the order the kernel extends them: kernel (12), model and serving parameters (13),
    /// configuration and command line (14).
    #[must_use]
    pub const fn events(&self) -> [Measurement; BOOT_EVENT_COUNT] {
        [
            Measurement {
                pcr: KERNEL_PCR,
                kind: EventKind::KernelImage,
                digest: self.kernel,
                description: "kernel text, rodata and data",
            },
            Measurement {
                pcr: MODEL_PCR,
                kind: EventKind::Model,
                digest: self.model,
                description: "model blob (initrd)",
            },
            Measurement {
                pcr: MODEL_PCR,
                kind: EventKind::ServingParameters,
                digest: self.serving,
                description: "serving parameters",
            },
            Measurement {
                pcr: CONFIGURATION_PCR,
                kind: EventKind::Configuration,
                digest: self.configuration,
                description: "appliance configuration",
            },
            Measurement {
                pcr: CONFIGURATION_PCR,
                kind: EventKind::CommandLine,
                digest: self.command_line,
                description: "kernel command line",
            },
        ]
    }

    /// PCRs 12, 13 and 14 (in that order) after the boot events, each starting from zero.
    #[must_use]
    pub fn replay(&self) -> [[u8; 32]; 3] {
        let mut pcrs = [[0u8; 32]; 3];
        for event in self.events() {
            let pcr = &mut pcrs[usize::from(event.pcr - KERNEL_PCR)];
            *pcr = eventlog::extend(pcr, &event.digest);
        }
        pcrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests() -> BootDigests {
        BootDigests {
            kernel: [1; 32],
            model: [2; 32],
            serving: [3; 32],
            configuration: [4; 32],
            command_line: [5; 32],
        }
    }

    #[test]
    fn events_follow_the_pcr_order_and_carry_their_digests() {
        let events = digests().events();
        let pcrs: [u8; 5] = events.map(|event| event.pcr);
        assert_eq!(pcrs, [12, 13, 13, 14, 14]);
        let firsts: [u8; 5] = events.map(|event| event.digest[0]);
        assert_eq!(firsts, [1, 2, 3, 4, 5]);
        for event in events {
            assert!(event.description.len() <= eventlog::MAX_DESCRIPTION);
            assert!(
                eventlog::Event::new(event.pcr, event.kind, event.digest, event.description)
                    .is_ok()
            );
        }
    }

    #[test]
    fn replay_extends_each_pcr_in_order() {
        let d = digests();
        let zero = [0u8; 32];
        let kernel = eventlog::extend(&zero, &d.kernel);
        let model = eventlog::extend(&eventlog::extend(&zero, &d.model), &d.serving);
        let configuration =
            eventlog::extend(&eventlog::extend(&zero, &d.configuration), &d.command_line);
        assert_eq!(d.replay(), [kernel, model, configuration]);
        // Order matters: swapping the two PCR 13 events changes the value.
        let swapped = BootDigests {
            model: d.serving,
            serving: d.model,
            ..d
        };
        assert_ne!(swapped.replay()[1], model);
    }
}
