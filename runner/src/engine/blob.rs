//! The model file in memory for the host engine: its bytes start on a 2 MiB boundary and are advised for transparent huge
//! pages (Linux `madvise(MADV_HUGEPAGE)`), as the appliance maps its memory with 2 MiB pages where alignment allows
//! (`kernel/src/paging.rs`).
//!
//! Decode streams every weight once per token. With 4 KiB pages the hardware prefetchers stop at each page
//! boundary and every page needs its own translation; with 2 MiB pages Gemma 3's output head (178 MB of Q8_0)
//! streamed at 31-32 GB/s on one thread of an AMD EPYC against 27 GB/s with 4 KiB pages. Where the kernel does
//! not give huge pages (THP off, or `madvise` refused) the buffer works as an ordinary one.

use std::fs::File;
use std::io::{self, Read};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::ptr::NonNull;

/// The huge-page size the bytes are aligned to.
const HUGE_PAGE: usize = 2 << 20;

/// A whole file's bytes, starting on a 2 MiB boundary of a huge-page-advised buffer.
pub struct Blob {
    /// The file's bytes at `start..start + len`, the rest zeros.
    buffer: Vec<u8>,
    start: usize,
    len: usize,
}

impl Blob {
    /// Reads all of `path`.
    pub fn read(path: &Path) -> io::Result<Blob> {
        let mut file = File::open(path)?;
        let too_large =
            || io::Error::new(io::ErrorKind::OutOfMemory, "the file is larger than memory");
        let len = usize::try_from(file.metadata()?.len()).map_err(|_| too_large())?;
        // A zeroed allocation this large comes straight from the kernel as untouched pages (glibc's calloc maps
        // it and skips the memset), so the advice below still applies when the pages are first written.
        let mut buffer = vec![0u8; len.checked_add(HUGE_PAGE).ok_or_else(too_large)?];
        let start = (HUGE_PAGE - buffer.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE;
        let bytes = &mut buffer[start..start + len];
        // A refusal (THP off or unsupported) only costs speed.
        // SAFETY: the range is `len` bytes of `buffer`, starting on a 2 MiB (so page) boundary; advising changes
        // no contents and no mapping.
        let _ = unsafe {
            nix::sys::mman::madvise(
                NonNull::from(&mut *bytes).cast(),
                len,
                nix::sys::mman::MmapAdvise::MADV_HUGEPAGE,
            )
        };
        file.read_exact(bytes)?;
        // The file must not have grown since its length was read (a partial copy would parse as another model).
        let mut extra = [0u8; 1];
        if file.read(&mut extra)? != 0 {
            return Err(io::Error::other("the file changed while it was read"));
        }
        Ok(Blob { buffer, start, len })
    }
}

impl Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.len]
    }
}

impl DerefMut for Blob {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buffer[self.start..self.start + self.len]
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
