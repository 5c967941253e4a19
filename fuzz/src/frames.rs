//! Request and response frames (net::frame, net::proto; docs/ARCHITECTURE.md §5): the appliance decodes
//! whatever a client sends, the client whatever an appliance sends. A body that decodes must encode back to a
//! frame that decodes to the same value.

use net::frame::{FrameDecoder, MAX_FRAME_LEN};
use net::proto::{Request, Response};

/// Feeds `data` (after its first byte, which picks the piece size) to a frame decoder in pieces, and decodes
/// each complete body both as a request and as a response.
pub fn frames(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 64) + 1;
    let mut decoder = FrameDecoder::new();
    for chunk in stream.chunks(piece) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let Ok(taken) = decoder.push(rest) else {
                // A bad header: the stream is out of sync and the connection is closed.
                assert!(decoder.push(b"x").is_err(), "a failed decoder stays failed");
                return;
            };
            assert!(
                taken > 0 && taken <= rest.len(),
                "push took {taken} of {}",
                rest.len()
            );
            rest = &rest[taken..];
            if let Some(body) = decoder.frame() {
                assert!(!body.is_empty() && body.len() <= MAX_FRAME_LEN);
                round_trip(body);
                decoder.consume();
            }
        }
    }
}

/// Encoding a decoded message and decoding it again is a fixed point (bytes are compared, not values: a NaN
/// temperature decodes, and NaN is not equal to itself).
fn round_trip(body: &[u8]) {
    if let Ok(request) = Request::parse(body) {
        let mut once = Vec::new();
        request.emit(&mut once).expect("a parsed request encodes");
        let again = Request::parse(&once[4..]).expect("an encoded request decodes");
        let mut twice = Vec::new();
        again.emit(&mut twice).expect("and encodes again");
        assert_eq!(once, twice);
    }
    if let Ok(response) = Response::parse(body) {
        let mut once = Vec::new();
        // A response too large for one frame is refused by emit, not truncated.
        if response.emit(&mut once).is_ok() {
            let again = Response::parse(&once[4..]).expect("an encoded response decodes");
            let mut twice = Vec::new();
            again.emit(&mut twice).expect("and encodes again");
            assert_eq!(once, twice);
        }
    }
}
