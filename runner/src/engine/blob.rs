//! The model file in memory for the host engine: one buffer aligned to 2 MiB and advised for transparent huge
//! pages (Linux `madvise(MADV_HUGEPAGE)`), as the appliance maps its memory with 2 MiB pages where alignment allows
//! (`kernel/src/paging.rs`).
//!
//! Decode streams every weight once per token. With 4 KiB pages the hardware prefetchers stop at each page
//! boundary and every page needs its own translation; with 2 MiB pages Gemma 3's output head (178 MB of Q8_0)
//! streamed at 31-32 GB/s on one thread of an AMD EPYC against 27 GB/s with 4 KiB pages. Where the kernel does
//! not give huge pages (THP off, or `madvise` refused) the buffer works as an ordinary one.

use std::alloc::{self, Layout};
use std::fs::File;
use std::io::{self, Read};
use std::ops::Deref;
use std::path::Path;
use std::ptr::NonNull;

/// The huge-page size the buffer is aligned to.
const HUGE_PAGE: usize = 2 << 20;

/// A whole file's bytes in a 2 MiB-aligned, huge-page-advised buffer.
pub struct Blob {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: `Blob` owns its buffer exclusively (like a `Box<[u8]>`) and only hands out shared references to it.
unsafe impl Send for Blob {}
// SAFETY: as above; `&Blob` gives only `&[u8]`.
unsafe impl Sync for Blob {}

impl Blob {
    /// Reads all of `path`.
    pub fn read(path: &Path) -> io::Result<Blob> {
        let mut file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::OutOfMemory, "the file is larger than memory")
        })?;
        let layout = Layout::from_size_align(len.max(1), HUGE_PAGE).map_err(|_| {
            io::Error::new(io::ErrorKind::OutOfMemory, "the file is larger than memory")
        })?;
        // SAFETY: the layout's size is at least 1.
        let ptr = NonNull::new(unsafe { alloc::alloc(layout) }).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                "cannot allocate memory for the model",
            )
        })?;
        let blob = Blob { ptr, len, layout };
        // Advise before the first touch, so the pages are faulted in huge. A refusal only costs speed.
        // SAFETY: the range is the allocation just made, page-aligned (2 MiB) and `layout.size()` long; advising
        // changes no contents.
        let _ = unsafe {
            nix::sys::mman::madvise(
                ptr.cast(),
                layout.size(),
                nix::sys::mman::MmapAdvise::MADV_HUGEPAGE,
            )
        };
        // SAFETY: `len` bytes from `ptr` are allocated and writable; zeroing initialises them (and faults them in).
        unsafe { ptr.as_ptr().write_bytes(0, len) };
        // SAFETY: the `len` bytes were just initialised; `blob` owns them and nothing else refers to them.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), len) };
        file.read_exact(bytes)?;
        // The file must not have grown since its length was read (a partial copy would parse as another model).
        let mut extra = [0u8; 1];
        if file.read(&mut extra)? != 0 {
            return Err(io::Error::other("the file changed while it was read"));
        }
        Ok(blob)
    }
}

impl Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes from `ptr` were initialised in `read` and live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc::alloc(self.layout)` and is freed once, here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_files_bytes_aligned_to_a_huge_page() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 4095, 3 << 20] {
            let path = dir.path().join(format!("f{len}"));
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&path, &bytes).unwrap();
            let blob = Blob::read(&path).unwrap();
            assert_eq!(&blob[..], &bytes[..], "length {len}");
            assert_eq!(blob.as_ptr() as usize % HUGE_PAGE, 0);
        }
        assert!(Blob::read(&dir.path().join("missing")).is_err());
    }
}
