//! Length-prefixed frames: the outer layer of the appliance protocol (docs/ARCHITECTURE.md §5).
//!
//! A frame is a 4-byte big-endian body length followed by that many bytes of body (a postcard-encoded
//! message). The length is checked against [`MAX_FRAME_LEN`] before any buffer is sized from it, so a
//! hostile peer cannot make either side allocate more than `HEADER_LEN + MAX_FRAME_LEN` bytes.

use alloc::vec::Vec;

/// Bytes in the length header.
pub const HEADER_LEN: usize = 4;

/// The largest body either side accepts. Larger announced lengths are refused before allocation.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Why a byte stream could not be split into frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The header announced a body longer than [`MAX_FRAME_LEN`].
    TooLarge { announced: u32 },
    /// The header announced an empty body; every message has at least a tag byte.
    Empty,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLarge { announced } => write!(
                out,
                "a frame of {announced} bytes is larger than the {MAX_FRAME_LEN}-byte limit"
            ),
            Self::Empty => out.write_str("a frame has an empty body"),
        }
    }
}

/// Appends one frame carrying `body` to `out`.
///
/// Returns [`FrameError::TooLarge`] (and appends nothing) when `body` exceeds [`MAX_FRAME_LEN`].
pub fn emit(body: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if body.is_empty() {
        return Err(FrameError::Empty);
    }
    let announced = u32::try_from(body.len()).unwrap_or(u32::MAX);
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { announced });
    }
    out.extend_from_slice(&announced.to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Checks a frame header and returns the body length it announces.
pub fn parse_header(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let announced = u32::from_be_bytes(header);
    if announced == 0 {
        return Err(FrameError::Empty);
    }
    match usize::try_from(announced) {
        Ok(len) if len <= MAX_FRAME_LEN => Ok(len),
        _ => Err(FrameError::TooLarge { announced }),
    }
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
///
/// Feed bytes with [`FrameDecoder::push`]; it returns how many it took. Once a whole frame is
/// buffered, [`FrameDecoder::frame`] yields the body and [`FrameDecoder::consume`] drops it. After an
/// error the decoder stays failed: the stream is out of sync and the connection should be closed.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    header: [u8; HEADER_LEN],
    header_filled: usize,
    /// The announced body length once the header is complete and valid.
    body_len: Option<usize>,
    body: Vec<u8>,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder waiting for the first header byte.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes bytes from `input` up to the end of the current frame and returns how many were taken.
    ///
    /// Stops early (returning fewer than `input.len()`) when a frame is complete, so the caller
    /// handles it before feeding the rest. Returns the error once the stream is known to be bad.
    pub fn push(&mut self, input: &[u8]) -> Result<usize, FrameError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let mut taken = 0;
        if self.body_len.is_none() {
            let want = HEADER_LEN - self.header_filled;
            let n = want.min(input.len());
            self.header[self.header_filled..self.header_filled + n].copy_from_slice(&input[..n]);
            self.header_filled += n;
            taken += n;
            if self.header_filled < HEADER_LEN {
                return Ok(taken);
            }
            match parse_header(self.header) {
                Ok(len) => {
                    // The length is bounded by MAX_FRAME_LEN here, so this reservation is too.
                    self.body.clear();
                    self.body.reserve_exact(len);
                    self.body_len = Some(len);
                }
                Err(error) => {
                    self.failed = Some(error);
                    return Err(error);
                }
            }
        }
        let len = self.body_len.unwrap_or(0);
        let want = len - self.body.len();
        let n = want.min(input.len() - taken);
        self.body.extend_from_slice(&input[taken..taken + n]);
        Ok(taken + n)
    }

    /// The body of the buffered frame, once it is complete.
    pub fn frame(&self) -> Option<&[u8]> {
        match self.body_len {
            Some(len) if self.body.len() == len => Some(&self.body),
            _ => None,
        }
    }

    /// Drops the completed frame so the next one can be read.
    pub fn consume(&mut self) {
        if self.frame().is_some() {
            self.body_len = None;
            self.header_filled = 0;
            self.body.clear();
        }
    }

    /// True when some bytes of an unfinished frame are buffered (EOF now would truncate it).
    pub fn is_mid_frame(&self) -> bool {
        self.header_filled > 0 && self.frame().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_pieces_of_every_size() {
        let mut stream = Vec::new();
        emit(b"hello", &mut stream).unwrap();
        emit(&[7u8; 300], &mut stream).unwrap();
        assert_eq!(&stream[..9], &[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        for piece in 1..stream.len() {
            let mut decoder = FrameDecoder::new();
            let mut frames = Vec::new();
            for chunk in stream.chunks(piece) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let n = decoder.push(rest).unwrap();
                    rest = &rest[n..];
                    if let Some(body) = decoder.frame() {
                        frames.push(body.to_vec());
                        decoder.consume();
                    }
                }
            }
            assert_eq!(
                frames,
                vec![b"hello".to_vec(), vec![7u8; 300]],
                "piece size {piece}"
            );
            assert!(!decoder.is_mid_frame());
        }
    }

    #[test]
    fn oversized_header_is_refused_before_allocation() {
        let mut decoder = FrameDecoder::new();
        let header = u32::MAX.to_be_bytes();
        assert_eq!(
            decoder.push(&header),
            Err(FrameError::TooLarge {
                announced: u32::MAX
            })
        );
        assert!(decoder.body.capacity() == 0);
        // Stays failed.
        assert!(decoder.push(&[0]).is_err());
        let just_over = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(
            parse_header(just_over),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            parse_header((MAX_FRAME_LEN as u32).to_be_bytes()),
            Ok(MAX_FRAME_LEN)
        );
    }

    #[test]
    fn empty_frames_are_refused() {
        assert_eq!(parse_header([0; 4]), Err(FrameError::Empty));
        assert_eq!(emit(&[], &mut Vec::new()), Err(FrameError::Empty));
    }

    #[test]
    fn emit_refuses_oversized_body() {
        let mut out = Vec::new();
        assert!(emit(&vec![0u8; MAX_FRAME_LEN + 1], &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn truncation_is_visible() {
        let mut stream = Vec::new();
        emit(b"abc", &mut stream).unwrap();
        for cut in 1..stream.len() {
            let mut decoder = FrameDecoder::new();
            decoder.push(&stream[..cut]).unwrap();
            assert!(decoder.frame().is_none());
            assert!(decoder.is_mid_frame(), "cut {cut}");
        }
    }
}
