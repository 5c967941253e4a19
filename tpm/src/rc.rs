//! TPM 2.0 response codes decoded into format-zero / format-one parts.
//!
//! Follows TCG TPM 2.0 Library Part 2, §6.6 (TPM_RC): bit 7 (F) selects format one; in format zero bit 8 (V)
//! marks a TPM 2.0 code (clear: a TPM 1.2 code), bit 10 (T) a vendor code and bit 11 (S) a warning; in format
//! one bit 6 (P) says bits 8-11 number a parameter, otherwise bit 11 says session (set) or handle (clear) and
//! bits 8-10 number it.

/// TPM_RC_SUCCESS.
pub const TPM_RC_SUCCESS: u32 = 0x000;
/// TPM_RC_INITIALIZE: TPM2_Startup was already done (Part 2 §6.6.3).
pub const TPM_RC_INITIALIZE: u32 = 0x100;
/// TPM_RC_RETRY (warning): the TPM asks the caller to send the command again.
pub const TPM_RC_RETRY: u32 = 0x922;
/// TPM_RC_YIELDED (warning).
pub const TPM_RC_YIELDED: u32 = 0x908;
/// TPM_RC_TESTING (warning).
pub const TPM_RC_TESTING: u32 = 0x90A;

/// Which handle, session or parameter a format-one code refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Parameter number 1-15.
    Parameter(u8),
    /// Handle number 1-7 (0: unspecified).
    Handle(u8),
    /// Session number 1-7 (0: unspecified).
    Session(u8),
}

/// A nonzero response code, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseCode {
    /// Format zero, TPM 2.0 (V set): `error` is bits 0-6 (E); `warning` is S; `vendor` is T.
    FormatZero {
        /// The whole code as received.
        raw: u32,
        /// Bits 0-6.
        error: u8,
        /// Bit 11 (S): a warning, not an error.
        warning: bool,
        /// Bit 10 (T): vendor defined.
        vendor: bool,
    },
    /// Format one (F set): `error` is bits 0-5 (E) and `location` where it applies.
    FormatOne {
        /// The whole code as received.
        raw: u32,
        /// Bits 0-5, the TPM_RC_* value minus RC_FMT1 (0x080).
        error: u8,
        /// The handle, session or parameter the error concerns.
        location: Location,
    },
    /// Format zero with V clear: a TPM 1.2 code.
    Tpm12 {
        /// The whole code as received.
        raw: u32,
    },
}

impl ResponseCode {
    /// Decodes a nonzero response code. Returns `None` for TPM_RC_SUCCESS.
    #[must_use]
    pub const fn decode(raw: u32) -> Option<Self> {
        if raw == TPM_RC_SUCCESS {
            return None;
        }
        if raw & 0x080 != 0 {
            let error = (raw & 0x3f) as u8;
            let number = ((raw >> 8) & 0xf) as u8;
            let location = if raw & 0x040 != 0 {
                Location::Parameter(number)
            } else if number & 0x8 != 0 {
                Location::Session(number & 0x7)
            } else {
                Location::Handle(number & 0x7)
            };
            return Some(Self::FormatOne {
                raw,
                error,
                location,
            });
        }
        if raw & 0x100 == 0 {
            return Some(Self::Tpm12 { raw });
        }
        Some(Self::FormatZero {
            raw,
            error: (raw & 0x7f) as u8,
            warning: raw & 0x800 != 0,
            vendor: raw & 0x400 != 0,
        })
    }

    /// The code as the TPM sent it.
    #[must_use]
    pub const fn raw(self) -> u32 {
        match self {
            Self::FormatZero { raw, .. } | Self::FormatOne { raw, .. } | Self::Tpm12 { raw } => raw,
        }
    }

    /// The code with the handle/session/parameter number removed: for format one `RC_FMT1 + E`, for
    /// format zero the whole code. Compare it against the TPM_RC_* constants of Part 2 §6.6.3.
    #[must_use]
    pub const fn base(self) -> u32 {
        match self {
            Self::FormatOne { error, .. } => 0x080 + error as u32,
            Self::FormatZero { raw, .. } | Self::Tpm12 { raw } => raw,
        }
    }

    /// The spec name of the base code, for the common ones.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self.base() {
            0x100 => "TPM_RC_INITIALIZE",
            0x101 => "TPM_RC_FAILURE",
            0x103 => "TPM_RC_SEQUENCE",
            0x10B => "TPM_RC_PRIVATE",
            0x119 => "TPM_RC_HMAC",
            0x120 => "TPM_RC_DISABLED",
            0x121 => "TPM_RC_EXCLUSIVE",
            0x124 => "TPM_RC_AUTH_TYPE",
            0x125 => "TPM_RC_AUTH_MISSING",
            0x126 => "TPM_RC_POLICY",
            0x127 => "TPM_RC_PCR",
            0x128 => "TPM_RC_PCR_CHANGED",
            0x12D => "TPM_RC_UPGRADE",
            0x12E => "TPM_RC_TOO_MANY_CONTEXTS",
            0x12F => "TPM_RC_AUTH_UNAVAILABLE",
            0x130 => "TPM_RC_REBOOT",
            0x131 => "TPM_RC_UNBALANCED",
            0x142 => "TPM_RC_COMMAND_SIZE",
            0x143 => "TPM_RC_COMMAND_CODE",
            0x144 => "TPM_RC_AUTHSIZE",
            0x145 => "TPM_RC_AUTH_CONTEXT",
            0x146 => "TPM_RC_NV_RANGE",
            0x147 => "TPM_RC_NV_SIZE",
            0x148 => "TPM_RC_NV_LOCKED",
            0x149 => "TPM_RC_NV_AUTHORIZATION",
            0x14A => "TPM_RC_NV_UNINITIALIZED",
            0x14B => "TPM_RC_NV_SPACE",
            0x14C => "TPM_RC_NV_DEFINED",
            0x150 => "TPM_RC_BAD_CONTEXT",
            0x151 => "TPM_RC_CPHASH",
            0x152 => "TPM_RC_PARENT",
            0x153 => "TPM_RC_NEEDS_TEST",
            0x154 => "TPM_RC_NO_RESULT",
            0x155 => "TPM_RC_SENSITIVE",
            0x081 => "TPM_RC_ASYMMETRIC",
            0x082 => "TPM_RC_ATTRIBUTES",
            0x083 => "TPM_RC_HASH",
            0x084 => "TPM_RC_VALUE",
            0x085 => "TPM_RC_HIERARCHY",
            0x087 => "TPM_RC_KEY_SIZE",
            0x088 => "TPM_RC_MGF",
            0x089 => "TPM_RC_MODE",
            0x08A => "TPM_RC_TYPE",
            0x08B => "TPM_RC_HANDLE",
            0x08C => "TPM_RC_KDF",
            0x08D => "TPM_RC_RANGE",
            0x08E => "TPM_RC_AUTH_FAIL",
            0x08F => "TPM_RC_NONCE",
            0x090 => "TPM_RC_PP",
            0x092 => "TPM_RC_SCHEME",
            0x095 => "TPM_RC_SIZE",
            0x096 => "TPM_RC_SYMMETRIC",
            0x097 => "TPM_RC_TAG",
            0x098 => "TPM_RC_SELECTOR",
            0x09A => "TPM_RC_INSUFFICIENT",
            0x09B => "TPM_RC_SIGNATURE",
            0x09C => "TPM_RC_KEY",
            0x09D => "TPM_RC_POLICY_FAIL",
            0x09F => "TPM_RC_INTEGRITY",
            0x0A0 => "TPM_RC_TICKET",
            0x0A1 => "TPM_RC_RESERVED_BITS",
            0x0A2 => "TPM_RC_BAD_AUTH",
            0x0A3 => "TPM_RC_EXPIRED",
            0x0A4 => "TPM_RC_POLICY_CC",
            0x0A5 => "TPM_RC_BINDING",
            0x0A6 => "TPM_RC_CURVE",
            0x0A7 => "TPM_RC_ECC_POINT",
            0x901 => "TPM_RC_CONTEXT_GAP",
            0x902 => "TPM_RC_OBJECT_MEMORY",
            0x903 => "TPM_RC_SESSION_MEMORY",
            0x904 => "TPM_RC_MEMORY",
            0x905 => "TPM_RC_SESSION_HANDLES",
            0x906 => "TPM_RC_OBJECT_HANDLES",
            0x907 => "TPM_RC_LOCALITY",
            0x908 => "TPM_RC_YIELDED",
            0x909 => "TPM_RC_CANCELED",
            0x90A => "TPM_RC_TESTING",
            0x910 => "TPM_RC_REFERENCE_H0",
            0x911 => "TPM_RC_REFERENCE_H1",
            0x912 => "TPM_RC_REFERENCE_H2",
            0x918 => "TPM_RC_REFERENCE_S0",
            0x919 => "TPM_RC_REFERENCE_S1",
            0x91A => "TPM_RC_REFERENCE_S2",
            0x920 => "TPM_RC_NV_RATE",
            0x921 => "TPM_RC_LOCKOUT",
            0x922 => "TPM_RC_RETRY",
            0x923 => "TPM_RC_NV_UNAVAILABLE",
            _ => "unnamed response code",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_not_an_error() {
        assert_eq!(ResponseCode::decode(0), None);
    }

    #[test]
    fn format_zero_initialize() {
        let code = ResponseCode::decode(0x100).unwrap();
        assert_eq!(
            code,
            ResponseCode::FormatZero {
                raw: 0x100,
                error: 0,
                warning: false,
                vendor: false
            }
        );
        assert_eq!(code.name(), "TPM_RC_INITIALIZE");
    }

    #[test]
    fn format_zero_warning_retry() {
        let code = ResponseCode::decode(TPM_RC_RETRY).unwrap();
        assert!(matches!(
            code,
            ResponseCode::FormatZero { warning: true, .. }
        ));
        assert_eq!(code.name(), "TPM_RC_RETRY");
    }

    #[test]
    fn format_one_parameter() {
        // TPM_RC_VALUE on parameter 1: 0x084 + P (0x040) + 1 << 8.
        let code = ResponseCode::decode(0x1C4).unwrap();
        assert_eq!(
            code,
            ResponseCode::FormatOne {
                raw: 0x1C4,
                error: 0x04,
                location: Location::Parameter(1)
            }
        );
        assert_eq!(code.base(), 0x084);
        assert_eq!(code.name(), "TPM_RC_VALUE");
    }

    #[test]
    fn format_one_session_and_handle() {
        // TPM_RC_AUTH_FAIL (0x08E) for session 1: N = 0x8 | 1.
        let code = ResponseCode::decode(0x98E).unwrap();
        assert!(matches!(
            code,
            ResponseCode::FormatOne {
                location: Location::Session(1),
                ..
            }
        ));
        assert_eq!(code.name(), "TPM_RC_AUTH_FAIL");
        // TPM_RC_HANDLE (0x08B) for handle 2.
        let code = ResponseCode::decode(0x28B).unwrap();
        assert!(matches!(
            code,
            ResponseCode::FormatOne {
                location: Location::Handle(2),
                ..
            }
        ));
    }

    #[test]
    fn tpm12_code() {
        assert_eq!(
            ResponseCode::decode(0x1E),
            Some(ResponseCode::Tpm12 { raw: 0x1E })
        );
    }

    #[test]
    fn every_nonzero_code_decodes_without_panic() {
        for raw in (1u32..0x1000).chain([u32::MAX, 0x8000_0000]) {
            let code = ResponseCode::decode(raw).unwrap();
            assert_eq!(code.raw(), raw);
            let _ = code.name();
        }
    }
}
