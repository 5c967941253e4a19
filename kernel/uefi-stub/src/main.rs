//! cloister's boot application: the PE32+ file the firmware loads and measures into PCR 4.
//!
//! It holds the fixed-address kernel ELF, the command line and the model as sections of itself, so
//! the firmware's Authenticode measurement covers all of them (docs/ARCHITECTURE.md, "UEFI boot").
//! Before ExitBootServices it copies the kernel's segments to their link addresses, keeps the TCG2
//! event log (TCG EFI Protocol Specification §6.6.4, GetEventLog, format TCG_2) and finds the ACPI
//! RSDP; after it, it converts the memory map to E820, appends the final-events table's later events
//! to the log, writes a PVH start info and enters the kernel's 32-bit PVH entry, exactly where QEMU's
//! direct `-kernel` boot enters it. Firmware interfaces follow UEFI 2.10 §4 (system table), §7
//! (boot services) and §9.1 (loaded image protocol).
#![no_std]
#![no_main]

use core::ffi::c_void;

use uefi_stub::elf::Kernel;
use uefi_stub::event_log::{self, Header};
use uefi_stub::memory_map::{self, E820Entry};
use uefi_stub::pe::{self, Section};
use uefi_stub::start_info::{self, Contents, MAX_MEMMAP};

mod rt;
// The kernel's reset (chipset reset register, then a triple fault), one copy for both binaries.
#[path = "../../src/arch/reset.rs"]
mod reset;

type Handle = *mut c_void;
type Status = usize;

const SUCCESS: Status = 0;
/// EFI_LOAD_ERROR: the high bit marks an error (UEFI 2.10 Appendix D).
const LOAD_ERROR: Status = (1 << 63) | 1;
const PAGE: u64 = 4096;

/// EFI_ALLOCATE_TYPE.
const ALLOCATE_MAX_ADDRESS: u32 = 1;
const ALLOCATE_ADDRESS: u32 = 2;
/// EFI_MEMORY_TYPE.
const LOADER_CODE: u32 = 1;
const LOADER_DATA: u32 = 2;
/// EFI_TCG2_EVENT_LOG_FORMAT_TCG_2.
const EVENT_LOG_FORMAT_TCG_2: u32 = 2;
/// Room kept after the event log for the final-events table's later events.
const FINAL_EVENTS_ROOM: u64 = 64 * 1024;
/// Most final events read; EDK2 logs a handful (ExitBootServices' two among them).
const MAX_FINAL_EVENTS: u64 = 1024;

#[repr(C)]
#[derive(PartialEq, Eq)]
struct Guid(u32, u16, u16, [u8; 8]);

const LOADED_IMAGE_PROTOCOL: Guid = Guid(
    0x5b1b_31a1,
    0x9562,
    0x11d2,
    [0x8e, 0x3f, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b],
);
const TCG2_PROTOCOL: Guid = Guid(
    0x607f_766c,
    0x7455,
    0x42be,
    [0x93, 0x0b, 0xe4, 0xd7, 0x6d, 0xb2, 0x72, 0x0f],
);
const TCG2_FINAL_EVENTS_TABLE: Guid = Guid(
    0x1e2e_d096,
    0x30e2,
    0x4254,
    [0xbd, 0x89, 0x86, 0x3b, 0xbe, 0xf8, 0x23, 0x25],
);
const ACPI_20_TABLE: Guid = Guid(
    0x8868_e871,
    0xe4f1,
    0x11d3,
    [0xbc, 0x22, 0x00, 0x80, 0xc7, 0x3c, 0x88, 0x81],
);
const ACPI_10_TABLE: Guid = Guid(
    0xeb9d_2d30,
    0x2d88,
    0x11d3,
    [0x9a, 0x16, 0x00, 0x90, 0x27, 0x3f, 0xc1, 0x4d],
);

#[repr(C)]
struct TableHeader {
    signature: u64,
    revision: u32,
    header_size: u32,
    crc32: u32,
    reserved: u32,
}

#[repr(C)]
struct SimpleTextOutput {
    reset: usize,
    output_string: unsafe extern "efiapi" fn(*const SimpleTextOutput, *const u16) -> Status,
}

#[repr(C)]
struct ConfigurationTable {
    guid: Guid,
    table: *const c_void,
}

#[repr(C)]
struct SystemTable {
    header: TableHeader,
    firmware_vendor: usize,
    firmware_revision: u32,
    console_in_handle: usize,
    console_in: usize,
    console_out_handle: usize,
    console_out: *const SimpleTextOutput,
    standard_error_handle: usize,
    standard_error: usize,
    runtime_services: usize,
    boot_services: *const BootServices,
    number_of_table_entries: usize,
    configuration_table: *const ConfigurationTable,
}

/// `EFI_BOOT_SERVICES` up to LocateProtocol; slots the stub does not call are plain words.
#[repr(C)]
struct BootServices {
    header: TableHeader,
    raise_restore_tpl: [usize; 2],
    allocate_pages: unsafe extern "efiapi" fn(u32, u32, usize, *mut u64) -> Status,
    free_pages: usize,
    get_memory_map:
        unsafe extern "efiapi" fn(*mut usize, *mut u8, *mut usize, *mut usize, *mut u32) -> Status,
    allocate_pool: unsafe extern "efiapi" fn(u32, usize, *mut *mut u8) -> Status,
    free_pool: usize,
    /// CreateEvent .. CheckEvent, then the three protocol interface installers.
    events_and_installers: [usize; 9],
    handle_protocol: unsafe extern "efiapi" fn(Handle, *const Guid, *mut *mut c_void) -> Status,
    /// Reserved .. UnloadImage.
    images: [usize; 9],
    exit_boot_services: unsafe extern "efiapi" fn(Handle, usize) -> Status,
    /// GetNextMonotonicCount .. LocateHandleBuffer.
    miscellaneous: [usize; 10],
    locate_protocol:
        unsafe extern "efiapi" fn(*const Guid, *mut c_void, *mut *mut c_void) -> Status,
}

/// `EFI_TCG2_PROTOCOL` up to GetEventLog.
#[repr(C)]
struct Tcg2Protocol {
    get_capability: usize,
    get_event_log:
        unsafe extern "efiapi" fn(*const Tcg2Protocol, u32, *mut u64, *mut u64, *mut u8) -> Status,
}

/// Offsets in `EFI_LOADED_IMAGE_PROTOCOL` of ImageBase and ImageSize.
const LOADED_IMAGE_BASE: usize = 64;
const LOADED_IMAGE_SIZE: usize = 72;

unsafe extern "C" {
    static uefi_trampoline_start: u8;
    static uefi_trampoline_end: u8;
}

// Leaves long mode for the kernel's 32-bit PVH entry (Intel SDM Vol. 3A §9.8.5.4, "Returning
// from IA-32e Mode"): a far return into a 32-bit code segment of our own GDT (compatibility mode),
// paging off, EFER.LME off, then a jump to the entry with EBX = start info, as the PVH protocol
// requires. The code is copied to a page below 4 GiB first, so it is position independent.
// Arguments: RDI = start info, RSI = entry, RDX = GDT pointer (all below 4 GiB).
core::arch::global_asm!(
    r#"
    .section .text.uefi_trampoline, "ax"
    .global uefi_trampoline_start
    .global uefi_trampoline_end
    .code64
uefi_trampoline_start:
    cli
    lgdt (%rdx)
    mov %edi, %ebx
    mov %esi, %ebp
    lea 1f(%rip), %rax
    pushq $0x08
    push %rax
    lretq
    .code32
1:  mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov %cr0, %eax
    and $0x7fffffff, %eax
    mov %eax, %cr0
    mov $0xC0000080, %ecx
    rdmsr
    and $0xfffffeff, %eax
    wrmsr
    xor %eax, %eax
    mov %eax, %cr4
    jmp *%ebp
uefi_trampoline_end:
    .code64
    "#,
    options(att_syntax)
);

/// Flat 32-bit code (0x08) and data (0x10) segments for the trampoline.
const TRAMPOLINE_GDT: [u64; 3] = [0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];

/// Prints an ASCII message on the firmware console.
fn print(system: &SystemTable, message: &str) {
    const LONGEST: usize = 127;
    // UCS-2 with room for the terminating NUL.
    let mut wide = [0u16; LONGEST + 1];
    for (slot, byte) in wide
        .iter_mut()
        .zip(message.bytes().chain(*b"\r\n"))
        .take(LONGEST)
    {
        *slot = u16::from(byte);
    }
    if system.console_out.is_null() {
        return;
    }
    // SAFETY: ConOut is the firmware's text output protocol, valid during boot services, and
    // `wide` is NUL-terminated.
    unsafe { ((*system.console_out).output_string)(system.console_out, wide.as_ptr()) };
}

/// The firmware's entry into the boot application.
#[unsafe(no_mangle)]
extern "efiapi" fn efi_main(image: Handle, system: *const SystemTable) -> Status {
    // SAFETY: the firmware passes a valid system table that outlives boot services.
    let system = unsafe { &*system };
    match boot(image, system) {
        Ok(never) => match never {},
        Err(message) => {
            print(system, "cloister: cannot start the kernel:");
            print(system, message);
            LOAD_ERROR
        }
    }
}

/// Allocates whole pages of `kind` below `limit` (or exactly at `at`).
fn allocate_pages(
    services: &BootServices,
    kind: u32,
    bytes: u64,
    placement: Placement,
) -> Result<u64, &'static str> {
    let pages = bytes.div_ceil(PAGE) as usize;
    let (allocate_type, mut address) = match placement {
        Placement::At(address) => (ALLOCATE_ADDRESS, address),
        Placement::Below4G => (ALLOCATE_MAX_ADDRESS, 0xffff_ffff),
    };
    // SAFETY: AllocatePages with a valid type and an out-pointer to a live local.
    let status = unsafe { (services.allocate_pages)(allocate_type, kind, pages, &mut address) };
    if status != SUCCESS {
        return Err(match placement {
            Placement::At(_) => "the kernel's load address is not free memory",
            Placement::Below4G => "no memory below 4 GiB",
        });
    }
    Ok(address)
}

enum Placement {
    At(u64),
    Below4G,
}

fn configuration_table(system: &SystemTable, guid: &Guid) -> Option<*const c_void> {
    // SAFETY: the firmware's configuration table array has `number_of_table_entries` entries.
    let tables = unsafe {
        core::slice::from_raw_parts(system.configuration_table, system.number_of_table_entries)
    };
    tables
        .iter()
        .find(|entry| entry.guid == *guid)
        .map(|entry| entry.table)
}

/// Firmware memory at `address` as bytes.
///
/// # Safety
/// `[address, address + len)` must be memory the firmware filled and keeps mapped (identity
/// mapped, UEFI 2.10 §2.3.4) and nothing writes while the stub runs.
unsafe fn firmware_bytes(address: u64, len: usize) -> &'static [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { core::slice::from_raw_parts(address as *const u8, len) }
}

/// The firmware's event log as GetEventLog returned it: (address, length, final events seen then).
fn event_log(services: &BootServices, system: &SystemTable) -> Option<(u64, usize, u64)> {
    let mut protocol: *mut c_void = core::ptr::null_mut();
    // SAFETY: LocateProtocol with a valid GUID and out-pointer.
    let status =
        unsafe { (services.locate_protocol)(&TCG2_PROTOCOL, core::ptr::null_mut(), &mut protocol) };
    if status != SUCCESS || protocol.is_null() {
        return None;
    }
    let protocol = protocol as *const Tcg2Protocol;
    let (mut location, mut last, mut truncated) = (0u64, 0u64, 0u8);
    // SAFETY: `protocol` is the firmware's EFI_TCG2_PROTOCOL instance; the out-pointers are live.
    let status = unsafe {
        ((*protocol).get_event_log)(
            protocol,
            EVENT_LOG_FORMAT_TCG_2,
            &mut location,
            &mut last,
            &mut truncated,
        )
    };
    // A truncated log (EventLogTruncated) is still handed over: the verifier's replay against the
    // quoted PCRs refuses it, which is the check that matters.
    if status != SUCCESS || location == 0 || last < location {
        return None;
    }
    // The final-events table holds every event logged after the first GetEventLog call; those
    // already there now are also in the log just returned (TCG EFI Protocol Specification §6.5).
    let seen = configuration_table(system, &TCG2_FINAL_EVENTS_TABLE)
        .and_then(|table| {
            // SAFETY: the table starts with its 16-byte header (Version, NumberOfEvents).
            let header =
                unsafe { firmware_bytes(table as u64, event_log::FINAL_EVENTS_HEADER_LEN) };
            event_log::final_events_count(header).ok()
        })
        .unwrap_or(0);
    // SAFETY: a TCG_2 log starts with its TCG_PCR_EVENT header record, which is longer than this.
    let prefix = unsafe { firmware_bytes(location, event_log::HEADER_PREFIX_LEN) };
    let header_len = event_log::header_record_len(prefix).ok()?;
    // SAFETY: the log holds its whole header record.
    let header = Header::parse(unsafe { firmware_bytes(location, header_len) }).ok()?;
    let last_offset = (last - location) as usize;
    let length = if last_offset == 0 {
        header.len
    } else {
        // SAFETY: each read lies in the fixed fields of the log's last record, which the log holds.
        let read =
            |at: usize, len: usize| Some(unsafe { firmware_bytes(location + at as u64, len) });
        last_offset + header.event_len_by(read, last_offset).ok()?
    };
    Some((location, length, seen))
}

fn boot(image: Handle, system: &SystemTable) -> Result<core::convert::Infallible, &'static str> {
    // SAFETY: boot services are available until ExitBootServices below.
    let services = unsafe { &*system.boot_services };

    let mut loaded: *mut c_void = core::ptr::null_mut();
    // SAFETY: HandleProtocol on our own image handle with a valid out-pointer.
    let status = unsafe { (services.handle_protocol)(image, &LOADED_IMAGE_PROTOCOL, &mut loaded) };
    if status != SUCCESS || loaded.is_null() {
        return Err("no loaded image protocol");
    }
    // SAFETY: the loaded image protocol is live; ImageBase and ImageSize are at these offsets.
    let (base, size) = unsafe {
        let bytes = loaded as *const u8;
        (
            (bytes.add(LOADED_IMAGE_BASE) as *const u64).read_unaligned(),
            (bytes.add(LOADED_IMAGE_SIZE) as *const u64).read_unaligned(),
        )
    };
    // SAFETY: the firmware loaded this image at [base, base + size) and keeps it there.
    let own = unsafe { core::slice::from_raw_parts(base as *const u8, size as usize) };
    let section = |name: &[u8]| -> Result<&'static [u8], &'static str> {
        let Section { rva, len } =
            pe::find_section(own, name).map_err(|_| "a payload section is missing")?;
        let (start, end) = (rva as usize, rva as usize + len as usize);
        if end > own.len() {
            return Err("a payload section lies outside the image");
        }
        // SAFETY: inside the loaded image, which is never freed.
        Ok(unsafe { core::slice::from_raw_parts(own.as_ptr().add(start), end - start) })
    };
    let kernel_file = section(b".kernel")?;
    let model = section(b".model")?;
    let cmdline = section(b".cmdline")?;

    let kernel = Kernel::parse(kernel_file).map_err(|_| "the kernel ELF is malformed")?;
    let (low, high) = kernel.span();
    allocate_pages(services, LOADER_DATA, high - low, Placement::At(low))?;
    for segment in kernel.segments() {
        let bytes =
            &kernel_file[segment.offset as usize..(segment.offset + segment.file_len) as usize];
        // SAFETY: [paddr, paddr + memory_len) lies in the pages just allocated at the kernel's
        // link addresses, which nothing else uses; the source is the image's kernel section.
        unsafe {
            let destination = segment.paddr as *mut u8;
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), destination, bytes.len());
            core::ptr::write_bytes(
                destination.add(bytes.len()),
                0,
                (segment.memory_len - segment.file_len) as usize,
            );
        }
    }

    let info_page = allocate_pages(services, LOADER_DATA, PAGE, Placement::Below4G)?;
    let code_page = allocate_pages(services, LOADER_CODE, PAGE, Placement::Below4G)?;
    let rsdp = configuration_table(system, &ACPI_20_TABLE)
        .or_else(|| configuration_table(system, &ACPI_10_TABLE))
        .map_or(0, |table| table as u64);

    // The event log, copied into memory of ours with room for the events that follow.
    let log = match event_log(services, system) {
        Some((location, length, seen)) => {
            let copy = allocate_pages(
                services,
                LOADER_DATA,
                length as u64 + FINAL_EVENTS_ROOM,
                Placement::Below4G,
            )?;
            // SAFETY: the firmware's log has `length` bytes; the copy has room for them.
            unsafe {
                core::ptr::copy_nonoverlapping(location as *const u8, copy as *mut u8, length)
            };
            Some((copy, length, seen))
        }
        None => None,
    };
    let final_events = configuration_table(system, &TCG2_FINAL_EVENTS_TABLE);

    // The memory map, then ExitBootServices with its key; a changed map means fetch and retry.
    let mut map_size = 0usize;
    let (mut key, mut descriptor_size, mut version) = (0usize, 0usize, 0u32);
    // SAFETY: a zero-sized query; it only writes the out-parameters.
    unsafe {
        (services.get_memory_map)(
            &mut map_size,
            core::ptr::null_mut(),
            &mut key,
            &mut descriptor_size,
            &mut version,
        )
    };
    let capacity = map_size + 16 * descriptor_size.max(48);
    let mut map: *mut u8 = core::ptr::null_mut();
    // SAFETY: AllocatePool with a valid type and out-pointer.
    if unsafe { (services.allocate_pool)(LOADER_DATA, capacity, &mut map) } != SUCCESS {
        return Err("no memory for the memory map");
    }
    let mut exited = false;
    for _ in 0..4 {
        map_size = capacity;
        // SAFETY: `map` has `capacity` bytes.
        let status = unsafe {
            (services.get_memory_map)(
                &mut map_size,
                map,
                &mut key,
                &mut descriptor_size,
                &mut version,
            )
        };
        if status != SUCCESS {
            return Err("GetMemoryMap failed");
        }
        // SAFETY: our image handle and the key of the map just read.
        if unsafe { (services.exit_boot_services)(image, key) } == SUCCESS {
            exited = true;
            break;
        }
    }
    if !exited {
        return Err("ExitBootServices failed");
    }

    // No firmware service from here on: only memory.
    // SAFETY: GetMemoryMap wrote `map_size` bytes into the pool buffer, which stays ours.
    let map = unsafe { core::slice::from_raw_parts(map, map_size) };
    let mut ranges = [E820Entry::default(); MAX_MEMMAP];
    let Ok(count) = memory_map::to_e820(map, descriptor_size, &mut ranges) else {
        halt()
    };
    let mut modules = [(model.as_ptr() as u64, model.len() as u64), (0, 0)];
    let mut module_count = 1;
    if let Some((copy, length, seen)) = log {
        let total = append_final_events(copy, length, seen, final_events);
        modules[1] = (copy, total as u64);
        module_count = 2;
    }
    // SAFETY: the info page is ours, below 4 GiB and identity mapped.
    let page = unsafe { core::slice::from_raw_parts_mut(info_page as *mut u8, PAGE as usize) };
    let contents = Contents {
        modules: &modules[..module_count],
        memory_map: &ranges[..count],
        cmdline,
        rsdp,
    };
    if start_info::write(page, info_page, &contents).is_err() {
        halt()
    }
    let gdt_at = start_info::LAYOUT_LEN.next_multiple_of(16);
    for (index, descriptor) in TRAMPOLINE_GDT.iter().enumerate() {
        page[gdt_at + index * 8..gdt_at + index * 8 + 8].copy_from_slice(&descriptor.to_le_bytes());
    }
    let pointer_at = gdt_at + TRAMPOLINE_GDT.len() * 8;
    page[pointer_at..pointer_at + 2]
        .copy_from_slice(&((TRAMPOLINE_GDT.len() * 8 - 1) as u16).to_le_bytes());
    page[pointer_at + 2..pointer_at + 10]
        .copy_from_slice(&(info_page + gdt_at as u64).to_le_bytes());

    let start = &raw const uefi_trampoline_start;
    let end = &raw const uefi_trampoline_end;
    let length = end as usize - start as usize;
    // SAFETY: the code page is ours (EfiLoaderCode, so executable in the firmware's tables) and
    // the trampoline is a few dozen bytes of position-independent code.
    unsafe {
        core::ptr::copy_nonoverlapping(start, code_page as *mut u8, length);
        let trampoline: extern "sysv64" fn(u64, u64, u64) -> ! =
            core::mem::transmute(code_page as usize);
        trampoline(info_page, kernel.entry, info_page + pointer_at as u64)
    }
}

/// Appends the final-events table's events after the first `seen` to the log copy at `copy`
/// (`length` bytes, with [`FINAL_EVENTS_ROOM`] after it); returns the new length. Events that do
/// not fit or do not parse are left out, and the verifier's replay then reports the mismatch.
fn append_final_events(copy: u64, length: usize, seen: u64, table: Option<*const c_void>) -> usize {
    let Some(table) = table.map(|table| table as u64) else {
        return length;
    };
    // SAFETY: the copy has `length` bytes of log followed by FINAL_EVENTS_ROOM bytes of room,
    // all ours.
    let log = unsafe {
        core::slice::from_raw_parts_mut(copy as *mut u8, length + FINAL_EVENTS_ROOM as usize)
    };
    let Ok(header) = Header::parse(&log[..length]) else {
        return length;
    };
    // SAFETY: the table (ACPI NVS, kept after ExitBootServices) starts with its 16-byte header.
    let count = unsafe { firmware_bytes(table, event_log::FINAL_EVENTS_HEADER_LEN) };
    let Ok(total) = event_log::final_events_count(count) else {
        return length;
    };
    let mut offset = event_log::FINAL_EVENTS_HEADER_LEN;
    let mut end = length;
    for index in 0..total.min(MAX_FINAL_EVENTS) {
        // SAFETY: each read lies in the fixed fields of one of the table's NumberOfEvents records.
        let read = |at: usize, len: usize| Some(unsafe { firmware_bytes(table + at as u64, len) });
        let Ok(record) = header.event_len_by(read, offset) else {
            break;
        };
        if index >= seen {
            if end + record > log.len() {
                break;
            }
            // SAFETY: the record is one of the table's NumberOfEvents whole records.
            let bytes = unsafe { firmware_bytes(table + offset as u64, record) };
            log[end..end + record].copy_from_slice(bytes);
            end += record;
        }
        offset += record;
    }
    end
}

/// Stops after boot services are gone, when nothing can report an error any more: a failed boot step, which
/// would fail the same way again after a reset (a panic resets instead, `rt`).
fn halt() -> ! {
    loop {
        // SAFETY: halting with interrupts off only stops this CPU.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
