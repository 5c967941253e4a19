//! The virtio HAL for `virtio-drivers` and the virtio-net NIC as a `smoltcp::phy::Device`.
//!
//! Memory is identity mapped and there is no IOMMU, so DMA addresses are virtual addresses and
//! sharing a buffer with the device is a no-op (virtio 1.2 §2.7, the device reads guest RAM).

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::vec::Vec;
use core::ptr::NonNull;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// DMA and MMIO translation for an identity-mapped kernel.
pub struct VirtioHal;

fn dma_layout(pages: usize) -> Layout {
    // PAGE_SIZE is a power of two and page counts come from the driver's small queue sizes.
    Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE).expect("valid DMA layout")
}

// SAFETY: allocations are zeroed, page aligned, identity mapped (physical = virtual) and live
// until `dma_dealloc`; MMIO addresses were mapped by `pci::virtio_net` before the transport is
// made; with no IOMMU and no bounce buffers, sharing is the identity.
unsafe impl Hal for VirtioHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { alloc_zeroed(dma_layout(pages)) };
        let pointer = NonNull::new(pointer).expect("DMA allocation failed: heap exhausted");
        (pointer.as_ptr() as PhysAddr, pointer)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the driver passes back a pointer from `dma_alloc` with the same page count.
        unsafe { dealloc(vaddr.as_ptr(), dma_layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("BAR at address zero")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Receive and transmit queue depth.
const QUEUE_SIZE: usize = 16;
/// Receive buffer size: an Ethernet frame plus the virtio-net header.
const BUFFER_SIZE: usize = 2048;

/// The NIC.
pub struct NetDevice {
    inner: VirtIONet<VirtioHal, PciTransport, QUEUE_SIZE>,
}

/// Why the NIC could not be started.
#[derive(Clone, Copy, Debug)]
pub struct NetError;

impl NetDevice {
    /// Negotiates with the device and posts the receive buffers.
    pub fn new(transport: PciTransport) -> Result<Self, NetError> {
        let inner = VirtIONet::new(transport, BUFFER_SIZE).map_err(|_| NetError)?;
        Ok(Self { inner })
    }

    /// The MAC address the device reports.
    pub fn mac_address(&self) -> [u8; 6] {
        self.inner.mac_address()
    }
}

/// A received frame, copied out so the device buffer is recycled at once.
pub struct RxToken(Vec<u8>);

/// Permission to send one frame.
pub struct TxToken<'a>(&'a mut VirtIONet<VirtioHal, PciTransport, QUEUE_SIZE>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buffer = self.0.new_tx_buffer(len);
        let result = f(buffer.packet_mut());
        // A failed send is a lost frame; TCP retransmits.
        let _ = self.0.send(buffer);
        result
    }
}

impl phy::Device for NetDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let buffer = self.inner.receive().ok()?;
        let frame = buffer.packet().to_vec();
        // Returning the buffer can only fail on a driver bug; the frame is already copied.
        let _ = self.inner.recycle_rx_buffer(buffer);
        Some((RxToken(frame), TxToken(&mut self.inner)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        self.inner.can_send().then_some(TxToken(&mut self.inner))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = 1514;
        capabilities.max_burst_size = Some(QUEUE_SIZE);
        capabilities
    }
}
