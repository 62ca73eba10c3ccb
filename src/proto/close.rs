//! Close status codes and close-frame bodies (RFC 6455 §5.5.1, §7.4); never sends or times anything.
//!
//! The close handshake's states live with the connection; this module only says which codes are
//! legal on the wire and how a close body is parsed.

use crate::proto::error::ProtocolError;

/// RFC 6455 §7.4.1: normal closure.
pub const NORMAL: u16 = 1000;
/// RFC 6455 §7.4.1: the endpoint is going away (server shutdown, page navigation).
pub const GOING_AWAY: u16 = 1001;
/// RFC 6455 §7.4.1: the peer broke the protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// RFC 6455 §7.4.1: the payload is inconsistent with the message type (bad UTF-8 in text).
pub const INVALID_PAYLOAD: u16 = 1007;
/// The endpoint cannot accept this type of data (binary on a text-only protocol).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// RFC 6455 §7.4.1: a generic policy violation.
pub const POLICY_VIOLATION: u16 = 1008;
/// RFC 6455 §7.4.1: a message is too big to process.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// RFC 6455 §7.4.1 (as amended by the IANA registry): an unexpected server condition.
pub const INTERNAL_ERROR: u16 = 1011;

/// The longest close reason in bytes: a control payload is at most 125 bytes (RFC 6455 §5.5) and
/// the status code takes 2 of them.
pub const REASON_BYTES_MAX: usize = 123;

/// Whether `code` may appear in a close frame on the wire.
///
/// RFC 6455 §7.4.1-§7.4.2: 1000-1003 and 1007-1011 are defined (1011 via the IANA registry);
/// 1004 is reserved, 1005 and 1006 MUST NOT be sent; 3000-4999 belong to libraries and
/// applications; everything else is reserved or undefined.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// A parsed close body. `code` is `None` when the body was empty (RFC 6455 §5.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    pub code: Option<u16>,
    pub reason: &'a str,
}

/// Parses an unmasked close payload: empty, or a 2-byte code followed by a UTF-8 reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<CloseFrame<'_>, ProtocolError> {
    // RFC 6455 §5.5.1: "If there is a body, the first two bytes of the body MUST be a 2-byte
    // unsigned integer (in network byte order) representing a status code".
    let Some((code_bytes, reason_bytes)) = payload.split_first_chunk::<2>() else {
        return if payload.is_empty() {
            Ok(CloseFrame {
                code: None,
                reason: "",
            })
        } else {
            Err(ProtocolError::InvalidClosePayloadLength)
        };
    };
    let code = u16::from_be_bytes(*code_bytes);
    if !is_valid_close_code(code) {
        return Err(ProtocolError::InvalidCloseCode(code));
    }
    // RFC 6455 §5.5.1: the rest of the body is a UTF-8 reason, not necessarily human readable.
    let reason =
        simdutf8::basic::from_utf8(reason_bytes).map_err(|_| ProtocolError::InvalidCloseReason)?;
    Ok(CloseFrame {
        code: Some(code),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_are_valid_only_in_the_defined_ranges() {
        let table: [(std::ops::RangeInclusive<u16>, bool); 9] = [
            (0..=999, false),
            (1000..=1003, true),
            (1004..=1006, false),
            (1007..=1011, true),
            (1012..=2999, false),
            (3000..=4999, true),
            (5000..=u16::MAX, false),
            (1005..=1005, false),
            (1006..=1006, false),
        ];
        for (range, valid) in table {
            for code in range {
                assert_eq!(is_valid_close_code(code), valid, "code {code}");
            }
        }
    }

    #[test]
    fn named_close_codes_are_valid_on_the_wire() {
        for code in [
            NORMAL,
            GOING_AWAY,
            PROTOCOL_ERROR,
            INVALID_PAYLOAD,
            POLICY_VIOLATION,
            MESSAGE_TOO_BIG,
            INTERNAL_ERROR,
        ] {
            assert!(is_valid_close_code(code), "code {code}");
        }
    }

    #[test]
    fn empty_close_body_has_no_code() {
        assert_eq!(
            parse_close_payload(&[]),
            Ok(CloseFrame {
                code: None,
                reason: ""
            })
        );
    }

    #[test]
    fn close_body_of_one_byte_is_rejected_with_1002() {
        let error = parse_close_payload(&[0x03]).unwrap_err();
        assert_eq!(error, ProtocolError::InvalidClosePayloadLength);
        assert_eq!(error.close_code(), PROTOCOL_ERROR);
    }

    #[test]
    fn close_body_with_code_and_reason_parses() {
        assert_eq!(
            parse_close_payload(b"\x03\xe8bye \xe2\x82\xac"),
            Ok(CloseFrame {
                code: Some(1000),
                reason: "bye \u{20ac}"
            })
        );
    }

    #[test]
    fn close_code_1005_on_the_wire_is_rejected_with_1002() {
        let error = parse_close_payload(&1005u16.to_be_bytes()).unwrap_err();
        assert_eq!(error, ProtocolError::InvalidCloseCode(1005));
        assert_eq!(error.close_code(), PROTOCOL_ERROR);
    }

    #[test]
    fn close_reason_with_invalid_utf8_is_rejected_with_1007() {
        for reason in [&b"\xff"[..], b"ok\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82"] {
            let mut payload = 1000u16.to_be_bytes().to_vec();
            payload.extend_from_slice(reason);
            let error = parse_close_payload(&payload).unwrap_err();
            assert_eq!(error, ProtocolError::InvalidCloseReason, "{reason:?}");
            assert_eq!(error.close_code(), INVALID_PAYLOAD);
        }
    }
}
