//! RFC 6455 §5.2 frame headers: decode, encode, opcodes and masking; never buffers or allocates
//! on its own and never panics on peer bytes.
//!
//! Decoding only looks at one header; the decoder adds the connection rules (masking, limits,
//! fragmentation). Encoding is for our own frames, so it asserts what decoding checks.

use crate::proto::close::{self, REASON_BYTES_MAX};
use crate::proto::error::ProtocolError;

/// The longest frame header: 2 fixed bytes, an 8-byte extended length and a 4-byte mask.
pub const MAX_HEADER_BYTES: usize = 14;

/// The largest payload a control frame may carry (RFC 6455 §5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: u64 = 125;

/// RFC 6455 §5.2 opcodes; every other value is reserved and rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

impl Opcode {
    /// The opcode for the low 4 bits of the first header byte, `None` if reserved.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Continuation),
            1 => Some(Self::Text),
            2 => Some(Self::Binary),
            8 => Some(Self::Close),
            9 => Some(Self::Ping),
            10 => Some(Self::Pong),
            _ => None,
        }
    }

    /// RFC 6455 §5.5: opcodes with the high bit set (close, ping, pong) are control frames.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A decoded frame header. `header_len` is the number of bytes it took on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    pub header_len: usize,
}

/// Decodes a header from the start of `buf`; `Ok(None)` means more bytes are needed.
///
/// Checks run in the order of fastwebsockets' `parse_frame_header`, each as soon as its bytes
/// are present: reserved bits, opcode, fragmented control frame, then (once the whole length is
/// in) the length's top bit and the control payload limit. It does not enforce masking or size
/// limits; the decoder does. With `MAX_HEADER_BYTES` or more bytes it never returns `Ok(None)`.
pub fn decode_header(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let fin = first & 0x80 != 0;
    // RFC 6455 §5.2: "MUST be 0 unless an extension is negotiated that defines meanings".
    if first & 0x70 != 0 {
        return Err(ProtocolError::ReservedBitsSet);
    }
    let opcode_bits = first & 0x0F;
    // RFC 6455 §5.2: "If an unknown opcode is received, the receiving endpoint MUST _Fail the
    // WebSocket Connection_."
    let opcode = Opcode::from_u8(opcode_bits).ok_or(ProtocolError::UnknownOpcode(opcode_bits))?;
    // RFC 6455 §5.5: "Control frames themselves MUST NOT be fragmented."
    if opcode.is_control() && !fin {
        return Err(ProtocolError::FragmentedControlFrame);
    }
    let Some(&second) = buf.get(1) else {
        return Ok(None);
    };
    let masked = second & 0x80 != 0;
    let after_fixed = buf.get(2..).unwrap_or_default();
    // RFC 6455 §5.2: 0-125 is the length; 126 means a 16-bit length follows, 127 a 64-bit one.
    let (payload_len, length_bytes) = match second & 0x7F {
        126 => match after_fixed.first_chunk::<2>() {
            Some(bytes) => (u64::from(u16::from_be_bytes(*bytes)), 2),
            None => return Ok(None),
        },
        127 => match after_fixed.first_chunk::<8>() {
            Some(bytes) => (u64::from_be_bytes(*bytes), 8),
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    // RFC 6455 §5.2: "the most significant bit MUST be 0" in the 64-bit length.
    if payload_len >> 63 != 0 {
        return Err(ProtocolError::LengthTopBitSet);
    }
    // RFC 6455 §5.5: "All control frames MUST have a payload length of 125 bytes or less".
    if opcode.is_control() && payload_len > CONTROL_PAYLOAD_BYTES_MAX {
        return Err(ProtocolError::ControlFrameTooLong { len: payload_len });
    }
    let mut header_len = 2 + length_bytes;
    let mask = if masked {
        let after_length = buf.get(header_len..).unwrap_or_default();
        let Some(key) = after_length.first_chunk::<4>() else {
            return Ok(None);
        };
        header_len += 4;
        Some(*key)
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// Writes a header into `out` and returns its length.
///
/// Server frames pass `mask: None`; the load tool's client frames pass `Some(mask)`. Uses the
/// minimal length encoding (RFC 6455 §5.2). Panics on a header we must never send: a length
/// with the top bit set, or a fragmented or oversized control frame.
pub fn encode_header(
    fin: bool,
    opcode: Opcode,
    payload_len: u64,
    mask: Option<[u8; 4]>,
    out: &mut [u8; MAX_HEADER_BYTES],
) -> usize {
    // The decoder checks these on the way in; we check them on the way out.
    assert!(
        payload_len >> 63 == 0,
        "payload length {payload_len} has the top bit set"
    );
    assert!(
        !opcode.is_control() || (fin && payload_len <= CONTROL_PAYLOAD_BYTES_MAX),
        "invalid control frame: fin {fin}, {payload_len} bytes"
    );
    out[0] = (u8::from(fin) << 7) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = 2;
    if payload_len <= 125 {
        // Cannot truncate: checked just above.
        out[1] = mask_bit | payload_len as u8;
    } else if let Ok(short) = u16::try_from(payload_len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        len = 4;
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&payload_len.to_be_bytes());
        len = 10;
    }
    if let Some(key) = mask {
        out[len..len + 4].copy_from_slice(&key);
        len += 4;
    }
    len
}

/// Appends a complete unmasked (server) frame with FIN set.
///
/// Panics on a control frame over 125 bytes, like [`encode_header`].
pub fn encode_frame(opcode: Opcode, payload: &[u8], out: &mut Vec<u8>) {
    let mut header = [0u8; MAX_HEADER_BYTES];
    let header_len = encode_header(true, opcode, payload.len() as u64, None, &mut header);
    out.reserve(header_len + payload.len());
    out.extend_from_slice(&header[..header_len]);
    out.extend_from_slice(payload);
}

/// Appends a complete masked (client) frame with FIN set.
pub fn encode_client_frame(opcode: Opcode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let mut header = [0u8; MAX_HEADER_BYTES];
    let header_len = encode_header(true, opcode, payload.len() as u64, Some(mask), &mut header);
    out.reserve(header_len + payload.len());
    out.extend_from_slice(&header[..header_len]);
    let payload_start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[payload_start..], mask, 0);
}

/// Appends a server close frame with `code` and `reason`.
///
/// The reason is cut at a char boundary to fit 123 bytes (RFC 6455 §5.5: control payloads are at
/// most 125 bytes, 2 of them the code). Panics if `code` must not be sent (RFC 6455 §7.4).
pub fn encode_close(code: u16, reason: &str, out: &mut Vec<u8>) {
    assert!(
        close::is_valid_close_code(code),
        "close code {code} must not be sent"
    );
    let mut end = reason.len().min(REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; 2 + REASON_BYTES_MAX];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode_frame(Opcode::Close, &payload[..2 + end], out);
}

/// XORs `buf` with `mask`, where `buf` starts `offset` bytes into the payload, so a payload can
/// be unmasked piecewise as it arrives (RFC 6455 §5.3: byte i is XORed with `mask[i % 4]`).
///
/// Works a machine word (8 bytes) at a time; the tail is done bytewise.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    // Rotate the key so that buf[0] lines up with mask[offset % 4].
    let mut rotated = [0u8; 4];
    for (index, byte) in rotated.iter_mut().enumerate() {
        *byte = mask[(index + offset) % 4];
    }
    let [a, b, c, d] = rotated;
    let word_key = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        // Cannot fail: `chunks_exact_mut(8)` yields slices of exactly 8 bytes.
        let bytes = <[u8; 8]>::try_from(&*word).unwrap();
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word_key).to_ne_bytes());
    }
    // The tail starts at a multiple of 8 bytes into `buf`, so it lines up with `rotated[0]`.
    for (byte, key) in words
        .into_remainder()
        .iter_mut()
        .zip(rotated.iter().cycle())
    {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Decodes `bytes`, checking that every strict prefix asks for more bytes (or fails with the
    /// same error) first, so headers split at any boundary behave alike.
    fn decode_every_prefix(bytes: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        let full = decode_header(bytes);
        let end_max = match &full {
            Ok(Some(parsed)) => parsed.header_len,
            _ => bytes.len(),
        };
        for end in 0..end_max {
            match (decode_header(&bytes[..end]), &full) {
                (Ok(None), _) => {}
                (Err(error), Err(expected)) => assert_eq!(&error, expected),
                (other, _) => panic!("prefix {end} of {bytes:x?} gave {other:?}"),
            }
        }
        full
    }

    fn header(
        fin: bool,
        opcode: Opcode,
        mask: Option<[u8; 4]>,
        len: u64,
        hl: usize,
    ) -> FrameHeader {
        FrameHeader {
            fin,
            opcode,
            mask,
            payload_len: len,
            header_len: hl,
        }
    }

    #[test]
    fn rfc_6455_section_5_7_examples_decode_byte_for_byte() {
        use Opcode::*;
        let mut len_256 = vec![0x82, 0x7E, 0x01, 0x00];
        len_256.resize(4 + 256, 0);
        let table: [(&[u8], FrameHeader); 7] = [
            // A single-frame unmasked text message "Hello".
            (b"\x81\x05Hello", header(true, Text, None, 5, 2)),
            // A single-frame masked text message "Hello".
            (
                b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
                header(true, Text, Some(RFC_MASK), 5, 6),
            ),
            // A fragmented unmasked text message: "Hel" then "lo".
            (b"\x01\x03Hel", header(false, Text, None, 3, 2)),
            (b"\x80\x02lo", header(true, Continuation, None, 2, 2)),
            // An unmasked ping "Hello" and a masked pong "Hello".
            (b"\x89\x05Hello", header(true, Ping, None, 5, 2)),
            (
                b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
                header(true, Pong, Some(RFC_MASK), 5, 6),
            ),
            // 256 bytes binary in a single unmasked frame.
            (&len_256, header(true, Binary, None, 256, 4)),
        ];
        for (bytes, expected) in table {
            assert_eq!(decode_every_prefix(bytes), Ok(Some(expected)), "{bytes:x?}");
        }
        // 64 KiB binary in a single unmasked frame.
        let len_64k = b"\x82\x7F\x00\x00\x00\x00\x00\x01\x00\x00";
        assert_eq!(
            decode_every_prefix(len_64k),
            Ok(Some(header(true, Binary, None, 65536, 10)))
        );
    }

    #[test]
    fn rfc_6455_section_5_7_examples_encode_byte_for_byte() {
        let mut out = Vec::new();
        encode_frame(Opcode::Text, b"Hello", &mut out);
        assert_eq!(out, b"\x81\x05Hello");
        out.clear();
        encode_client_frame(Opcode::Text, b"Hello", RFC_MASK, &mut out);
        assert_eq!(out, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
        out.clear();
        encode_frame(Opcode::Ping, b"Hello", &mut out);
        assert_eq!(out, b"\x89\x05Hello");
        out.clear();
        encode_client_frame(Opcode::Pong, b"Hello", RFC_MASK, &mut out);
        assert_eq!(out, b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
        out.clear();
        encode_frame(Opcode::Binary, &[0; 256], &mut out);
        assert_eq!(out[..4], [0x82, 0x7E, 0x01, 0x00]);
        out.clear();
        encode_frame(Opcode::Binary, &[0; 65536], &mut out);
        assert_eq!(out[..10], *b"\x82\x7F\x00\x00\x00\x00\x00\x01\x00\x00");
        let mut fragment = [0u8; MAX_HEADER_BYTES];
        assert_eq!(
            encode_header(false, Opcode::Text, 3, None, &mut fragment),
            2
        );
        assert_eq!(fragment[..2], [0x01, 0x03]);
        assert_eq!(
            encode_header(true, Opcode::Continuation, 2, None, &mut fragment),
            2
        );
        assert_eq!(fragment[..2], [0x80, 0x02]);
    }

    #[test]
    fn header_errors_are_reported_at_every_prefix_length() {
        let table: [(&[u8], ProtocolError); 9] = [
            (b"\xc1\x85", ProtocolError::ReservedBitsSet),
            (b"\xa1\x85", ProtocolError::ReservedBitsSet),
            (b"\x91\x85", ProtocolError::ReservedBitsSet),
            (b"\x83\x85", ProtocolError::UnknownOpcode(3)),
            (b"\x8b\x85", ProtocolError::UnknownOpcode(0xB)),
            (b"\x09\x80", ProtocolError::FragmentedControlFrame),
            (
                b"\x89\xfe\x00\x7e",
                ProtocolError::ControlFrameTooLong { len: 126 },
            ),
            (
                b"\x82\xff\x80\x00\x00\x00\x00\x00\x00\x00",
                ProtocolError::LengthTopBitSet,
            ),
            (
                b"\x88\xff\x00\x00\x00\x00\x00\x01\x00\x00",
                ProtocolError::ControlFrameTooLong { len: 65536 },
            ),
        ];
        for (bytes, expected) in table {
            assert_eq!(decode_every_prefix(bytes), Err(expected), "{bytes:x?}");
        }
    }

    #[test]
    fn ping_of_125_bytes_is_a_valid_header_and_126_is_not() {
        assert_eq!(
            decode_header(b"\x89\xfd\x01\x02\x03\x04"),
            Ok(Some(header(true, Opcode::Ping, Some([1, 2, 3, 4]), 125, 6)))
        );
        assert_eq!(
            decode_header(b"\x89\xfe\x00\x7e\x01\x02\x03\x04"),
            Err(ProtocolError::ControlFrameTooLong { len: 126 })
        );
    }

    #[test]
    fn largest_64_bit_length_without_the_top_bit_decodes() {
        let bytes = b"\x82\xff\x7f\xff\xff\xff\xff\xff\xff\xff\x01\x02\x03\x04";
        assert_eq!(
            decode_every_prefix(bytes),
            Ok(Some(header(
                true,
                Opcode::Binary,
                Some([1, 2, 3, 4]),
                u64::MAX >> 1,
                14
            )))
        );
    }

    #[test]
    fn encode_then_decode_round_trips_every_length_class() {
        for len in [0u64, 125, 126, 65535, 65536] {
            for mask in [None, Some([9, 8, 7, 6])] {
                for (fin, opcode) in [(true, Opcode::Binary), (false, Opcode::Text)] {
                    let mut out = [0u8; MAX_HEADER_BYTES];
                    let written = encode_header(fin, opcode, len, mask, &mut out);
                    let expected = header(fin, opcode, mask, len, written);
                    assert_eq!(decode_every_prefix(&out[..written]), Ok(Some(expected)));
                }
            }
        }
    }

    #[test]
    fn client_frame_round_trips_through_unmasking() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut out = Vec::new();
            encode_client_frame(Opcode::Binary, &payload, [1, 2, 3, 4], &mut out);
            let parsed = decode_header(&out).unwrap().unwrap();
            assert_eq!(parsed.payload_len, len as u64);
            let body = &mut out[parsed.header_len..];
            apply_mask(body, [1, 2, 3, 4], 0);
            assert_eq!(body, &payload[..]);
        }
    }

    #[test]
    fn apply_mask_equals_a_naive_byte_loop() {
        let mask = [0xa1, 0xb2, 0xc3, 0xd4];
        for offset in 0..8 {
            for len in 0..40 {
                let original: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
                let mut fast = original.clone();
                apply_mask(&mut fast, mask, offset);
                let naive: Vec<u8> = original
                    .iter()
                    .enumerate()
                    .map(|(i, byte)| byte ^ mask[(i + offset) % 4])
                    .collect();
                assert_eq!(fast, naive, "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn apply_mask_piecewise_equals_whole() {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let original: Vec<u8> = (0..100u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, mask, 0);
        for split in 0..original.len() {
            let mut pieces = original.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split);
            assert_eq!(pieces, whole, "split {split}");
        }
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary_to_fit_123_bytes() {
        // 61 two-byte chars = 122 bytes, then a 3-byte char that would end at 125.
        let reason = format!("{}\u{20ac}", "\u{e9}".repeat(61));
        let mut out = Vec::new();
        encode_close(close::GOING_AWAY, &reason, &mut out);
        let parsed = decode_header(&out).unwrap().unwrap();
        assert_eq!(parsed.payload_len, 124);
        let body = &out[parsed.header_len..];
        let frame = close::parse_close_payload(body).unwrap();
        assert_eq!(frame.code, Some(close::GOING_AWAY));
        assert_eq!(frame.reason, "\u{e9}".repeat(61));
        out.clear();
        encode_close(close::NORMAL, &"x".repeat(200), &mut out);
        assert_eq!(out.len(), 2 + 125);
    }

    #[test]
    fn opcodes_round_trip_and_reserved_values_are_rejected() {
        for value in 0..16u8 {
            match Opcode::from_u8(value) {
                Some(opcode) => assert_eq!(opcode as u8, value),
                None => assert!(matches!(value, 3..=7 | 11..=15)),
            }
        }
        assert!(Opcode::Ping.is_control() && !Opcode::Binary.is_control());
    }
}
