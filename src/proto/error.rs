//! Peer protocol errors of the RFC 6455 frame core and their close codes; never carries I/O errors.
//!
//! Every variant names the rule the peer broke. [`ProtocolError::close_code`] is the one place that
//! maps an error to the status code sent in our close frame (RFC 6455 §7.4.1).

use crate::proto::close;

/// A rule of RFC 6455 (or one of our configured limits) that the peer broke.
///
/// The connection must be closed with [`ProtocolError::close_code`]; nothing here is recoverable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// RFC 6455 §5.1: a client MUST mask every frame it sends.
    #[error("client frame is not masked")]
    UnmaskedClientFrame,
    /// RFC 6455 §5.2: RSV1-3 must be 0 unless an extension defines them (we negotiate none).
    #[error("reserved bits set without a negotiated extension")]
    ReservedBitsSet,
    /// RFC 6455 §5.2: opcodes 3-7 and 0xB-0xF are reserved.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// RFC 6455 §5.5: control frames carry at most 125 payload bytes.
    #[error("control frame payload of {len} bytes exceeds 125")]
    ControlFrameTooLong { len: u64 },
    /// RFC 6455 §5.5: control frames MUST NOT be fragmented.
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// RFC 6455 §5.2: the most significant bit of a 64-bit payload length MUST be 0.
    #[error("64-bit payload length has its top bit set")]
    LengthTopBitSet,
    /// A frame declared more payload bytes than `DecoderLimits::frame_bytes_max`.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: u64, max: u64 },
    /// A message grew past `DecoderLimits::message_bytes_max`.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge { len: u64, max: u64 },
    /// A message had more frames than `DecoderLimits::message_fragments_max`.
    #[error("message of {count} fragments exceeds the limit of {max}")]
    TooManyFragments { count: u32, max: u32 },
    /// RFC 6455 §5.4: a continuation frame arrived with no fragmented message open.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// RFC 6455 §5.4: a new text or binary frame arrived while a fragmented message was open.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// RFC 6455 §5.6, §8.1: text messages must be valid UTF-8.
    #[error("text payload is not valid UTF-8")]
    InvalidUtf8,
    /// RFC 6455 §5.5.1: a close body is empty or starts with a 2-byte status code.
    #[error("close payload of exactly 1 byte")]
    InvalidClosePayloadLength,
    /// RFC 6455 §7.4: this status code must not appear on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// RFC 6455 §5.5.1: the close reason must be valid UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
}

impl ProtocolError {
    /// The status code to send in our close frame for this error (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            Self::UnmaskedClientFrame
            | Self::ReservedBitsSet
            | Self::UnknownOpcode(_)
            | Self::ControlFrameTooLong { .. }
            | Self::FragmentedControlFrame
            | Self::LengthTopBitSet
            | Self::UnexpectedContinuation
            | Self::ExpectedContinuation
            | Self::InvalidClosePayloadLength
            | Self::InvalidCloseCode(_) => close::PROTOCOL_ERROR,
            Self::FrameTooLarge { .. }
            | Self::MessageTooLarge { .. }
            | Self::TooManyFragments { .. } => close::MESSAGE_TOO_BIG,
            Self::InvalidUtf8 | Self::InvalidCloseReason => close::INVALID_PAYLOAD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_close_code() {
        let table = [
            (ProtocolError::UnmaskedClientFrame, 1002),
            (ProtocolError::ReservedBitsSet, 1002),
            (ProtocolError::UnknownOpcode(3), 1002),
            (ProtocolError::ControlFrameTooLong { len: 126 }, 1002),
            (ProtocolError::FragmentedControlFrame, 1002),
            (ProtocolError::LengthTopBitSet, 1002),
            (ProtocolError::FrameTooLarge { len: 2, max: 1 }, 1009),
            (ProtocolError::MessageTooLarge { len: 2, max: 1 }, 1009),
            (ProtocolError::TooManyFragments { count: 2, max: 1 }, 1009),
            (ProtocolError::UnexpectedContinuation, 1002),
            (ProtocolError::ExpectedContinuation, 1002),
            (ProtocolError::InvalidUtf8, 1007),
            (ProtocolError::InvalidClosePayloadLength, 1002),
            (ProtocolError::InvalidCloseCode(1005), 1002),
            (ProtocolError::InvalidCloseReason, 1007),
        ];
        for (error, code) in table {
            assert_eq!(error.close_code(), code, "{error:?}");
        }
    }

    #[test]
    fn capacity_errors_name_the_value_and_the_limit() {
        let error = ProtocolError::FrameTooLarge { len: 11, max: 10 };
        assert_eq!(
            error.to_string(),
            "frame of 11 bytes exceeds the limit of 10"
        );
    }
}
