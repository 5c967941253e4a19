//! The network part of the kernel command line: how the appliance gets its IPv4 address and which port it serves.
//!
//! Grammar (whitespace-separated `key=value` words; other keys belong to other parts of the kernel and are
//! ignored here):
//!
//! - `ip=dhcp` (the default) or `ip=A.B.C.D/PREFIX` for a static address; the prefix is required.
//! - `gw=A.B.C.D`: the default gateway, only with a static address, and inside its subnet.
//! - `port=N`: the TCP port, 1..=65535, default [`crate::proto::APPLIANCE_PORT`].
//!
//! A key given twice is an error rather than "last one wins": the command line is measured into the TPM
//! (docs/ARCHITECTURE.md §4, PCR 14), so what a verifier reads must mean exactly one configuration.

use core::net::Ipv4Addr;
use core::str::FromStr;

use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

use crate::proto::APPLIANCE_PORT;

/// How the interface obtains its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv4Setup {
    /// Ask a DHCPv4 server (RFC 2131) and follow its leases.
    Dhcp,
    /// A fixed address and prefix, with an optional default gateway inside that subnet.
    Static {
        address: Ipv4Cidr,
        gateway: Option<Ipv4Address>,
    },
}

/// The appliance's network configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub ipv4: Ipv4Setup,
    /// The TCP port the appliance listens on.
    pub port: u16,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            ipv4: Ipv4Setup::Dhcp,
            port: APPLIANCE_PORT,
        }
    }
}

/// The command-line keys this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Ip,
    Gw,
    Port,
}

/// Why the network part of a command line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The same key appeared more than once.
    Duplicate(Key),
    /// `ip=` is neither `dhcp` nor `A.B.C.D/PREFIX` (a missing prefix lands here too).
    BadAddress,
    /// The prefix after `/` is not a number from 1 to 32.
    BadPrefix,
    /// The static address is not a unicast host address of its subnet (0.0.0.0, multicast, broadcast).
    NotUnicast,
    /// `gw=` is not a dotted-quad IPv4 address.
    BadGateway,
    /// `gw=` was given without a static `ip=`.
    GatewayWithoutStaticAddress,
    /// The gateway is not inside the static address's subnet, or is the address itself.
    GatewayOutsideSubnet,
    /// `port=` is not a number from 1 to 65535.
    BadPort,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Duplicate(key) => {
                let key = match key {
                    Key::Ip => "ip=",
                    Key::Gw => "gw=",
                    Key::Port => "port=",
                };
                write!(out, "{key} appears more than once")
            }
            Self::BadAddress => {
                out.write_str("ip= is neither dhcp nor an address with a prefix (A.B.C.D/N)")
            }
            Self::BadPrefix => {
                out.write_str("the prefix after / in ip= is not a number from 1 to 32")
            }
            Self::NotUnicast => {
                out.write_str("the ip= address is not a host address of its subnet")
            }
            Self::BadGateway => out.write_str("gw= is not an IPv4 address (A.B.C.D)"),
            Self::GatewayWithoutStaticAddress => out.write_str("gw= needs a static ip= address"),
            Self::GatewayOutsideSubnet => {
                out.write_str("gw= is outside the ip= address's subnet, or is the address itself")
            }
            Self::BadPort => out.write_str("port= is not a number from 1 to 65535"),
        }
    }
}

impl NetConfig {
    /// Reads the network keys from a kernel command line, ignoring every other word.
    pub fn parse(command_line: &str) -> Result<Self, ConfigError> {
        let mut ip = None;
        let mut gw = None;
        let mut port = None;
        for word in command_line.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let (slot, key) = match key {
                "ip" => (&mut ip, Key::Ip),
                "gw" => (&mut gw, Key::Gw),
                "port" => (&mut port, Key::Port),
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(ConfigError::Duplicate(key));
            }
        }

        let port = match port {
            None => APPLIANCE_PORT,
            Some(text) => match u16::from_str(text) {
                Ok(0) | Err(_) => return Err(ConfigError::BadPort),
                Ok(port) => port,
            },
        };
        let gateway = match gw {
            None => None,
            Some(text) => Some(Ipv4Addr::from_str(text).map_err(|_| ConfigError::BadGateway)?),
        };
        let ipv4 = match ip {
            None | Some("dhcp") => {
                if gateway.is_some() {
                    return Err(ConfigError::GatewayWithoutStaticAddress);
                }
                Ipv4Setup::Dhcp
            }
            Some(text) => {
                let address = parse_static_address(text)?;
                if let Some(gateway) = gateway {
                    if !address.contains_addr(&gateway)
                        || gateway == address.address()
                        || !is_host(gateway, address)
                    {
                        return Err(ConfigError::GatewayOutsideSubnet);
                    }
                }
                Ipv4Setup::Static { address, gateway }
            }
        };
        Ok(Self { ipv4, port })
    }
}

/// Parses `A.B.C.D/PREFIX` into a host address with its subnet.
fn parse_static_address(text: &str) -> Result<Ipv4Cidr, ConfigError> {
    let (address, prefix) = text.split_once('/').ok_or(ConfigError::BadAddress)?;
    let address = Ipv4Addr::from_str(address).map_err(|_| ConfigError::BadAddress)?;
    // u8::from_str accepts a leading '+', which is not part of the grammar.
    if prefix.starts_with('+') {
        return Err(ConfigError::BadPrefix);
    }
    let prefix = match u8::from_str(prefix) {
        Ok(prefix @ 1..=32) => prefix,
        _ => return Err(ConfigError::BadPrefix),
    };
    let cidr = Ipv4Cidr::new(address, prefix);
    if !is_host(address, cidr) {
        return Err(ConfigError::NotUnicast);
    }
    Ok(cidr)
}

/// True when `address` can name one host in `subnet`: unicast, and not the subnet's network or broadcast
/// address where those exist (prefixes up to /30; RFC 3021 lets /31 use both addresses).
fn is_host(address: Ipv4Address, subnet: Ipv4Cidr) -> bool {
    if address.is_unspecified() || address.is_multicast() || address.is_broadcast() {
        return false;
    }
    if subnet.prefix_len() <= 30 {
        let network = subnet.network().address();
        if address == network || Some(address) == subnet.broadcast() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_setup(a: [u8; 4], prefix: u8, gateway: Option<[u8; 4]>) -> Ipv4Setup {
        Ipv4Setup::Static {
            address: Ipv4Cidr::new(Ipv4Addr::from(a), prefix),
            gateway: gateway.map(Ipv4Addr::from),
        }
    }

    #[test]
    fn defaults_to_dhcp_on_the_appliance_port() {
        assert_eq!(
            NetConfig::parse(""),
            Ok(NetConfig {
                ipv4: Ipv4Setup::Dhcp,
                port: APPLIANCE_PORT
            })
        );
        assert_eq!(
            NetConfig::parse("console=ttyS0 quiet"),
            Ok(NetConfig::default())
        );
        assert_eq!(NetConfig::parse("ip=dhcp"), Ok(NetConfig::default()));
    }

    #[test]
    fn static_address_gateway_and_port() {
        let config =
            NetConfig::parse("model=x ip=10.0.2.15/24  gw=10.0.2.2\tport=8443 foo").unwrap();
        assert_eq!(
            config.ipv4,
            static_setup([10, 0, 2, 15], 24, Some([10, 0, 2, 2]))
        );
        assert_eq!(config.port, 8443);
        let config = NetConfig::parse("ip=192.168.1.7/32").unwrap();
        assert_eq!(config.ipv4, static_setup([192, 168, 1, 7], 32, None));
        let config = NetConfig::parse("ip=10.0.0.1/31 gw=10.0.0.0").unwrap();
        assert_eq!(
            config.ipv4,
            static_setup([10, 0, 0, 1], 31, Some([10, 0, 0, 0]))
        );
    }

    #[test]
    fn unknown_keys_and_bare_words_are_ignored() {
        assert_eq!(
            NetConfig::parse("ipx=1 gateway=2 ports=3 ip port gw =4"),
            Ok(NetConfig::default())
        );
    }

    #[test]
    fn malformed_values_are_typed_errors() {
        let cases: &[(&str, ConfigError)] = &[
            ("ip=", ConfigError::BadAddress),
            ("ip=10.0.2.15", ConfigError::BadAddress),
            ("ip=10.0.2/24", ConfigError::BadAddress),
            ("ip=10.0.2.256/24", ConfigError::BadAddress),
            ("ip=010.0.2.15/24", ConfigError::BadAddress),
            ("ip=DHCP", ConfigError::BadAddress),
            ("ip=10.0.2.15/", ConfigError::BadPrefix),
            ("ip=10.0.2.15/0", ConfigError::BadPrefix),
            ("ip=10.0.2.15/33", ConfigError::BadPrefix),
            ("ip=10.0.2.15/+24", ConfigError::BadPrefix),
            ("ip=10.0.2.15/24/1", ConfigError::BadPrefix),
            ("ip=0.0.0.0/8", ConfigError::NotUnicast),
            ("ip=224.0.0.1/24", ConfigError::NotUnicast),
            ("ip=255.255.255.255/32", ConfigError::NotUnicast),
            ("ip=10.0.2.0/24", ConfigError::NotUnicast),
            ("ip=10.0.2.255/24", ConfigError::NotUnicast),
            ("ip=10.0.2.15/24 gw=10.0.2", ConfigError::BadGateway),
            ("ip=10.0.2.15/24 gw=", ConfigError::BadGateway),
            ("gw=10.0.2.2", ConfigError::GatewayWithoutStaticAddress),
            (
                "ip=dhcp gw=10.0.2.2",
                ConfigError::GatewayWithoutStaticAddress,
            ),
            (
                "ip=10.0.2.15/24 gw=10.0.3.2",
                ConfigError::GatewayOutsideSubnet,
            ),
            (
                "ip=10.0.2.15/24 gw=10.0.2.15",
                ConfigError::GatewayOutsideSubnet,
            ),
            (
                "ip=10.0.2.15/24 gw=10.0.2.255",
                ConfigError::GatewayOutsideSubnet,
            ),
            (
                "ip=10.0.2.15/32 gw=10.0.2.1",
                ConfigError::GatewayOutsideSubnet,
            ),
            ("port=0", ConfigError::BadPort),
            ("port=65536", ConfigError::BadPort),
            ("port=-1", ConfigError::BadPort),
            ("port=", ConfigError::BadPort),
            ("port=80x", ConfigError::BadPort),
            ("port=1 port=1", ConfigError::Duplicate(Key::Port)),
            ("ip=dhcp ip=dhcp", ConfigError::Duplicate(Key::Ip)),
            (
                "ip=10.0.2.15/24 gw=10.0.2.2 gw=10.0.2.2",
                ConfigError::Duplicate(Key::Gw),
            ),
        ];
        for &(line, error) in cases {
            assert_eq!(NetConfig::parse(line), Err(error), "{line:?}");
        }
    }

    #[test]
    fn port_bounds() {
        assert_eq!(NetConfig::parse("port=1").unwrap().port, 1);
        assert_eq!(NetConfig::parse("port=65535").unwrap().port, 65535);
    }
}
