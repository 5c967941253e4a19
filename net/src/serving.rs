//! What the appliance measures besides its code, its model and its command line (docs/ARCHITECTURE.md §4): the serving
//! parameters (PCR 13, next to the model) and the effective configuration (PCR 14, next to the command line).
//!
//! Both are canonical text that the kernel hashes at boot and the runner hashes when it writes the manifest, so
//! this module is the single definition both sides use. The text is line based (`key=value\n`), starts with a
//! versioned header line, and lists every value in a fixed order with defaults filled in: two command lines that
//! mean the same configuration measure the same, and one that means another measures differently.
//!
//! Serving keys on the kernel command line (other keys belong to other parts and are ignored here):
//!
//! - `ctx=N`: positions of each session's KV cache, [`MIN_CONTEXT`]..=[`MAX_CONTEXT`], default
//!   [`DEFAULT_CONTEXT`]; the engine uses at most the model's training context.
//! - `sessions=N`: generations that can run at once, 1..=[`MAX_SESSIONS`], default [`DEFAULT_SESSIONS`]. Their
//!   KV caches are reserved at boot. The pool has [`CONNECTIONS_PER_SESSION`] connection slots per session, so
//!   a client can attest or ask for model info while every session generates; a generate request beyond the
//!   sessions is answered `Busy`.
//! - `cpus=N`: processors the engine runs on, 1..=[`MAX_CPUS`], default 1: the bootstrap processor and up to
//!   `N - 1` application processors (the runner sets it with `--cpus`, and QEMU's `-smp` to match). A processor
//!   that does not start is left out, so this is the most the appliance uses; it is measured because it is
//!   part of how the image was configured to serve.
//!
//! The connection pool's limits are fixed, not keys (issue 12; docs/ARCHITECTURE.md §5): [`FRAME_TIMEOUT`],
//! [`CLOSE_TIMEOUT`], a lifetime of [`CONNECTION_LIFETIME`], request caps (one attest, one activation, one
//! model info before the first generation) and eviction of idle connections from a full pool; all of them are
//! in the configuration text, so PCR 14 says which limits the appliance enforces.

use alloc::format;
use alloc::string::String;
use core::fmt::Write as _;
use core::str::FromStr;

use smoltcp::time::Duration;

use crate::config::{ConfigError, Ipv4Setup, NetConfig};
use crate::frame::MAX_FRAME_LEN;
use crate::server::Limits;

/// Default positions per session.
pub const DEFAULT_CONTEXT: u32 = 1024;
/// Fewest positions a session may have.
pub const MIN_CONTEXT: u32 = 16;
/// Most positions a session may have.
pub const MAX_CONTEXT: u32 = 32_768;
/// Default concurrent generations.
pub const DEFAULT_SESSIONS: u32 = 4;
/// Most concurrent generations.
pub const MAX_SESSIONS: u32 = 16;
/// Most processors the kernel uses (its per-processor stacks and tables are sized for this many).
pub const MAX_CPUS: u32 = 16;
/// Connection slots per generation session.
pub const CONNECTIONS_PER_SESSION: usize = 2;
/// Prompt tokens the engine runs per scheduling step (one step of one session at a time), so a long prompt
/// does not stall the other sessions for its whole prefill.
pub const PREFILL_CHUNK: u32 = 32;
/// Time a client has to complete each request frame or take each response frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a closing connection has to finish its FIN exchange.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of each connection's TCP receive and send buffers.
pub const SOCKET_BUFFER: usize = 16 * 1024;
/// The longest a connection may stay (`Limits::lifetime`): long enough for a chat of many generations, short
/// enough that a client answered `Busy` again and again frees its slot.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// How the engine serves: part of what the model does for a client, so measured with the model (PCR 13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServingParams {
    /// Positions of each session's KV cache (capped by the model's training context).
    pub context: u32,
    /// Concurrent generations, each with its KV cache reserved at boot.
    pub sessions: u32,
    /// Prompt tokens per scheduling step.
    pub prefill_chunk: u32,
    /// Processors the engine may run on.
    pub cpus: u32,
}

/// Which serving key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServingKey {
    Ctx,
    Sessions,
    Cpus,
}

/// Why the command line does not describe one configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplianceConfigError {
    /// The network keys were refused.
    Net(ConfigError),
    /// A serving key appeared twice.
    Duplicate(ServingKey),
    /// A serving key's value is not a number in its range.
    OutOfRange(ServingKey),
}

impl core::fmt::Display for ApplianceConfigError {
    fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let key = |key: &ServingKey| match key {
            ServingKey::Ctx => "ctx=",
            ServingKey::Sessions => "sessions=",
            ServingKey::Cpus => "cpus=",
        };
        match self {
            Self::Net(error) => write!(out, "{error}"),
            Self::Duplicate(serving) => write!(out, "{} appears more than once", key(serving)),
            Self::OutOfRange(ServingKey::Ctx) => write!(
                out,
                "ctx= is not a number from {MIN_CONTEXT} to {MAX_CONTEXT}"
            ),
            Self::OutOfRange(ServingKey::Sessions) => {
                write!(out, "sessions= is not a number from 1 to {MAX_SESSIONS}")
            }
            Self::OutOfRange(ServingKey::Cpus) => {
                write!(out, "cpus= is not a number from 1 to {MAX_CPUS}")
            }
        }
    }
}

/// Everything the command line configures, with defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplianceConfig {
    /// Address and port.
    pub net: NetConfig,
    /// The engine's parameters.
    pub serving: ServingParams,
    /// The connection pool.
    pub limits: Limits,
}

impl ApplianceConfig {
    /// Reads the network and serving keys of a kernel command line.
    pub fn from_cmdline(cmdline: &str) -> Result<Self, ApplianceConfigError> {
        let net = NetConfig::parse(cmdline).map_err(ApplianceConfigError::Net)?;
        let mut ctx = None;
        let mut sessions = None;
        let mut cpus = None;
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let (slot, key) = match key {
                "ctx" => (&mut ctx, ServingKey::Ctx),
                "sessions" => (&mut sessions, ServingKey::Sessions),
                "cpus" => (&mut cpus, ServingKey::Cpus),
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(ApplianceConfigError::Duplicate(key));
            }
        }
        let context = number(ctx, DEFAULT_CONTEXT, MIN_CONTEXT..=MAX_CONTEXT)
            .ok_or(ApplianceConfigError::OutOfRange(ServingKey::Ctx))?;
        let sessions = number(sessions, DEFAULT_SESSIONS, 1..=MAX_SESSIONS)
            .ok_or(ApplianceConfigError::OutOfRange(ServingKey::Sessions))?;
        let cpus = number(cpus, 1, 1..=MAX_CPUS)
            .ok_or(ApplianceConfigError::OutOfRange(ServingKey::Cpus))?;
        Ok(Self {
            net,
            serving: ServingParams {
                context,
                sessions,
                prefill_chunk: PREFILL_CHUNK,
                cpus,
            },
            limits: Limits {
                connections: sessions as usize * CONNECTIONS_PER_SESSION,
                rx_buffer: SOCKET_BUFFER,
                tx_buffer: SOCKET_BUFFER,
                frame_timeout: FRAME_TIMEOUT,
                close_timeout: CLOSE_TIMEOUT,
                lifetime: Some(CONNECTION_LIFETIME),
                request_caps: true,
                evict_idle: true,
            },
        })
    }

    /// The canonical text of the serving parameters, measured into PCR 13 after the model. Version 2 added
    /// `cpus`.
    pub fn serving_text(&self) -> String {
        let s = &self.serving;
        format!(
            "cloister serving v2\ncontext={}\nsessions={}\nprefill_chunk={}\ncpus={}\n",
            s.context, s.sessions, s.prefill_chunk, s.cpus
        )
    }

    /// The canonical text of the effective configuration, measured into PCR 14 before the command line.
    pub fn configuration_text(&self) -> String {
        let mut text = String::from("cloister configuration v1\n");
        // Writing into a String cannot fail.
        match self.net.ipv4 {
            Ipv4Setup::Dhcp => text.push_str("ip=dhcp\n"),
            Ipv4Setup::Static { address, gateway } => {
                let _ = writeln!(text, "ip={address}");
                match gateway {
                    Some(gateway) => {
                        let _ = writeln!(text, "gw={gateway}");
                    }
                    None => text.push_str("gw=none\n"),
                }
            }
        }
        let l = &self.limits;
        let _ = write!(
            text,
            "port={}\nconnections={}\nrx_buffer={}\ntx_buffer={}\nframe_timeout_ms={}\nclose_timeout_ms={}\nmax_frame={}\n\
             lifetime_ms={}\nrequest_caps={}\nevict_idle={}\n",
            self.net.port,
            l.connections,
            l.rx_buffer,
            l.tx_buffer,
            l.frame_timeout.total_millis(),
            l.close_timeout.total_millis(),
            MAX_FRAME_LEN,
            l.lifetime.map_or(0, |lifetime| lifetime.total_millis()),
            u8::from(l.request_caps),
            u8::from(l.evict_idle)
        );
        text
    }
}

/// `text` as a decimal in `range`, or `default` when absent; `None` when present but not acceptable.
fn number(text: Option<&str>, default: u32, range: core::ops::RangeInclusive<u32>) -> Option<u32> {
    match text {
        None => Some(default),
        Some(text) => u32::from_str(text).ok().filter(|n| range.contains(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_their_canonical_texts() {
        let config = ApplianceConfig::from_cmdline("").unwrap();
        assert_eq!(config.serving.context, DEFAULT_CONTEXT);
        assert_eq!(config.serving.sessions, DEFAULT_SESSIONS);
        assert_eq!(config.limits.connections, 8);
        assert_eq!(
            config.serving_text(),
            "cloister serving v2\ncontext=1024\nsessions=4\nprefill_chunk=32\ncpus=1\n"
        );
        assert_eq!(
            config.configuration_text(),
            "cloister configuration v1\nip=dhcp\nport=7000\nconnections=8\nrx_buffer=16384\n\
             tx_buffer=16384\nframe_timeout_ms=10000\nclose_timeout_ms=5000\nmax_frame=65536\n\
             lifetime_ms=600000\nrequest_caps=1\nevict_idle=1\n"
        );
    }

    #[test]
    fn explicit_values_change_the_texts() {
        let config = ApplianceConfig::from_cmdline(
            "ip=10.0.2.15/24 gw=10.0.2.2 port=7001 ctx=256 sessions=2 cpus=4",
        )
        .unwrap();
        assert_eq!(
            config.serving_text(),
            "cloister serving v2\ncontext=256\nsessions=2\nprefill_chunk=32\ncpus=4\n"
        );
        let text = config.configuration_text();
        assert!(text.starts_with(
            "cloister configuration v1\nip=10.0.2.15/24\ngw=10.0.2.2\nport=7001\nconnections=4\n"
        ));
        // Same meaning, other spelling: same measurement.
        let same = ApplianceConfig::from_cmdline(
            "cpus=4 sessions=2 ctx=256 port=7001 gw=10.0.2.2 ip=10.0.2.15/24 x=y",
        )
        .unwrap();
        assert_eq!(same.serving_text(), config.serving_text());
        assert_eq!(same.configuration_text(), text);
    }

    #[test]
    fn bad_values_are_typed_errors() {
        use ApplianceConfigError::*;
        for (cmdline, error) in [
            ("ctx=1 ", OutOfRange(ServingKey::Ctx)),
            ("ctx=99999999", OutOfRange(ServingKey::Ctx)),
            ("ctx=-5", OutOfRange(ServingKey::Ctx)),
            ("sessions=0", OutOfRange(ServingKey::Sessions)),
            ("sessions=17", OutOfRange(ServingKey::Sessions)),
            ("sessions=x", OutOfRange(ServingKey::Sessions)),
            ("ctx=64 ctx=64", Duplicate(ServingKey::Ctx)),
            ("sessions=1 sessions=2", Duplicate(ServingKey::Sessions)),
            ("cpus=0", OutOfRange(ServingKey::Cpus)),
            ("cpus=17", OutOfRange(ServingKey::Cpus)),
            ("cpus=2 cpus=2", Duplicate(ServingKey::Cpus)),
            ("port=0", Net(ConfigError::BadPort)),
        ] {
            assert_eq!(
                ApplianceConfig::from_cmdline(cmdline),
                Err(error),
                "{cmdline}"
            );
        }
    }
}
