//! Every command's response parsing in the TPM driver (tpm::commands; TCG TPM 2.0 Part 3): the kernel trusts no
//! TPM answer's sizes, and the verifier's swtpm paths use the same code. A transport answers each command with
//! the next response carved from the input; it keeps the transport contract (a well-formed header whose size
//! field is the response's length, as the TIS driver guarantees) and fuzzes everything after it.

use tpm::commands::{self, PcrSelection};
use tpm::public::KeyTemplate;
use tpm::transport::{Transport, TransportError};

/// Responses carved from the input: each is a 2-byte length, then that many bytes (tag, response code,
/// then the parameter area); the transport writes the size field itself.
struct Carved<'a> {
    rest: &'a [u8],
}

impl Transport for Carved<'_> {
    fn transact(&mut self, _command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        let Some((length, rest)) = self.rest.split_first_chunk::<2>() else {
            return Err(TransportError::NoDevice);
        };
        let length = usize::from(u16::from_be_bytes(*length)).min(rest.len());
        let (body, rest) = rest.split_at(length);
        self.rest = rest;
        // tag (2 bytes), then the size this transport fills in, then the response code and parameters.
        let total = (body.len() + 4).max(10).min(response.len());
        let (tag, after_tag) = body.split_at(body.len().min(2));
        response[..total].fill(0);
        response[..tag.len()].copy_from_slice(tag);
        response[2..6].copy_from_slice(&(total as u32).to_be_bytes());
        let tail = after_tag.len().min(total - 6);
        response[6..6 + tail].copy_from_slice(&after_tag[..tail]);
        Ok(total)
    }
}

/// Runs each command the kernel and the verifier send, in turn, against the carved responses; the first
/// byte picks where to start so that each command is reached with the input's first response.
pub fn tpm_responses(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut transport = Carved { rest };
    let selection = PcrSelection::from_indices(&[0, 4, 7, 12, 13, 14]).expect("a valid selection");
    let mut buffer = [0u8; 64];
    let mut certificate = vec![0u8; 2048];
    for step in 0..12u8 {
        match (first.wrapping_add(step)) % 12 {
            0 => drop(commands::startup(&mut transport)),
            1 => drop(commands::get_random(&mut transport, &mut buffer)),
            2 => drop(commands::pcr_extend(&mut transport, 12, &[7; 32])),
            3 => drop(commands::pcr_read(&mut transport, selection)),
            4 => drop(commands::create_primary(
                &mut transport,
                KeyTemplate::AkEccP256,
            )),
            5 => drop(commands::create_primary(
                &mut transport,
                KeyTemplate::EkRsa2048,
            )),
            6 => drop(commands::read_public(&mut transport, 0x8000_0000)),
            7 => drop(commands::read_ek_certificate(
                &mut transport,
                &mut certificate,
            )),
            8 => drop(commands::start_auth_session(&mut transport, &[1; 32])),
            9 => drop(commands::activate_credential_with_ek(
                &mut transport,
                0x8000_0001,
                0x8000_0000,
                &[2; 32],
                &[3; 68],
                &[4; 256],
            )),
            10 => drop(commands::quote(
                &mut transport,
                0x8000_0001,
                &[5; 32],
                selection,
            )),
            _ => drop(commands::flush_context(&mut transport, 0x8000_0001)),
        }
    }
}
