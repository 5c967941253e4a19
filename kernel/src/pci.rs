//! PCI configuration access over I/O ports 0xCF8/0xCFC (PCI Local Bus Spec 3.0 §3.2.2.3.2,
//! "Configuration Mechanism #1") and discovery of the virtio-net device (virtio 1.2 §4.1).

use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, PciRoot,
};
use virtio_drivers::transport::pci::PciTransport;

use crate::arch::cpu;
use crate::memory::Memory;
use crate::virtio::VirtioHal;

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;
const VIRTIO_VENDOR: u16 = 0x1AF4;
/// Modern (non-transitional) virtio-net: 0x1040 + device type 1.
const VIRTIO_NET_MODERN: u16 = 0x1041;

/// Configuration mechanism #1 through I/O ports.
pub struct PortConfigAccess;

fn address(function: DeviceFunction, offset: u8) -> u32 {
    0x8000_0000
        | (u32::from(function.bus) << 16)
        | (u32::from(function.device) << 11)
        | (u32::from(function.function) << 8)
        | u32::from(offset & 0xFC)
}

impl ConfigurationAccess for PortConfigAccess {
    fn read_word(&self, function: DeviceFunction, offset: u8) -> u32 {
        // SAFETY: the PCI configuration mechanism #1 ports; only this type drives them, and the
        // kernel is single-threaded, so the address/data pair is not interleaved.
        unsafe {
            cpu::outl(CONFIG_ADDRESS, address(function, offset));
            cpu::inl(CONFIG_DATA)
        }
    }

    fn write_word(&mut self, function: DeviceFunction, offset: u8, data: u32) {
        // SAFETY: as for `read_word`; the virtio transport writes only configuration registers
        // of devices it owns.
        unsafe {
            cpu::outl(CONFIG_ADDRESS, address(function, offset));
            cpu::outl(CONFIG_DATA, data);
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortConfigAccess
    }
}

/// Why no network device could be brought up.
#[derive(Clone, Copy, Debug)]
pub enum PciError {
    /// No modern virtio-net device on any bus (QEMU needs `disable-legacy=on`).
    NoVirtioNet,
    /// A BAR could not be read.
    Bar,
    /// A BAR's registers could not be mapped.
    Map,
    /// The virtio transport refused the device.
    Transport,
}

/// Finds the modern virtio-net device, maps its BARs uncached, enables it, and returns its
/// transport.
pub fn virtio_net(memory: &mut Memory) -> Result<PciTransport, PciError> {
    let mut root = PciRoot::new(PortConfigAccess);
    let mut found = None;
    'search: for bus in 0..=255u8 {
        for (function, info) in root.enumerate_bus(bus) {
            if info.vendor_id == VIRTIO_VENDOR && info.device_id == VIRTIO_NET_MODERN {
                found = Some(function);
                break 'search;
            }
        }
    }
    let function = found.ok_or(PciError::NoVirtioNet)?;
    let bars = root.bars(function).map_err(|_| PciError::Bar)?;
    for bar in bars.iter().flatten() {
        if let BarInfo::Memory { address, size, .. } = *bar {
            if size > 0 && address != 0 {
                memory.map_mmio(address, size).map_err(|_| PciError::Map)?;
            }
        }
    }
    root.set_command(function, Command::MEMORY_SPACE | Command::BUS_MASTER);
    PciTransport::new::<VirtioHal, _>(&mut root, function).map_err(|_| PciError::Transport)
}
