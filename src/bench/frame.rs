//! Client-side RFC 6455 frame codec for the load generator: encodes masked client frames and
//! decodes frame headers. Owns no buffers and no sockets; never used by the server, whose codec
//! lives in `proto::frame`.

/// RFC 6455 §5.2: opcodes. Values 3-7 and 0xB-0xF are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// 0x0: continuation of a fragmented message.
    Continuation,
    /// 0x1: UTF-8 text.
    Text,
    /// 0x2: binary.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl Opcode {
    /// The 4-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Decodes a 4-bit wire value; `None` for reserved opcodes.
    pub fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// RFC 6455 §5.5: opcodes with the high bit set are control frames.
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// RFC 6455 §5.5: control frame payloads are at most 125 bytes.
pub const CONTROL_PAYLOAD_BYTES_MAX: u64 = 125;

/// Longest possible frame header: 2 + 8 (64-bit length) + 4 (mask key).
pub const HEADER_BYTES_MAX: usize = 14;

/// A decoded frame header; the payload follows at `header_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit: last frame of a message.
    pub fin: bool,
    /// Frame opcode.
    pub opcode: Opcode,
    /// Masking key, present on client-to-server frames only (RFC 6455 §5.3).
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_bytes: u64,
    /// Length of the header itself in bytes (2..=14).
    pub header_bytes: usize,
}

/// A frame header that breaks RFC 6455 §5.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV1-3 set without a negotiated extension.
    #[error("reserved bits set: {0:#x}")]
    ReservedBitsSet(u8),
    /// Opcode 3-7 or 0xB-0xF.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// RFC 6455 §5.5: control frames must not be fragmented.
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// RFC 6455 §5.5: control frame payload over 125 bytes.
    #[error("control frame payload of {0} bytes (max 125)")]
    ControlFrameTooLong(u64),
    /// RFC 6455 §5.2: the 64-bit length must have its most significant bit clear.
    #[error("64-bit payload length with the high bit set")]
    LengthHighBitSet,
    /// RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode the length".
    #[error("payload length {0} not minimally encoded")]
    NonMinimalLength(u64),
}

/// Appends one complete, final (FIN) client frame: header, then `payload` masked with `mask`.
///
/// RFC 6455 §5.3: every client-to-server frame is masked.
pub fn encode_client_frame(opcode: Opcode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    debug_assert!(
        !opcode.is_control() || payload.len() as u64 <= CONTROL_PAYLOAD_BYTES_MAX,
        "control frame payload of {} bytes",
        payload.len()
    );
    encode_header(true, opcode, Some(mask), payload.len() as u64, out);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// Appends a frame header with the minimal length encoding (RFC 6455 §5.2).
pub fn encode_header(
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    payload_bytes: u64,
    out: &mut Vec<u8>,
) {
    assert!(
        payload_bytes >> 63 == 0,
        "payload length {payload_bytes} over 2^63"
    );
    out.push(u8::from(fin) << 7 | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if payload_bytes <= 125 {
        out.push(mask_bit | payload_bytes as u8);
    } else if let Ok(len16) = u16::try_from(payload_bytes) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&payload_bytes.to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// Decodes a frame header from the start of `buf`. `Ok(None)` means more bytes are needed.
///
/// Checks the header in the same order on every call: reserved bits, opcode, control-frame
/// rules, then the length encoding.
pub fn decode_header(buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let rsv = b0 & 0x70;
    if rsv != 0 {
        return Err(FrameError::ReservedBitsSet(rsv));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::ReservedOpcode(b0 & 0x0F))?;
    if opcode.is_control() && !fin {
        return Err(FrameError::FragmentedControlFrame);
    }
    let masked = b1 & 0x80 != 0;
    let (payload_bytes, mut header_bytes) = match b1 & 0x7F {
        126 => {
            let Some(len) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = u64::from(u16::from_be_bytes([len[0], len[1]]));
            if len <= 125 {
                return Err(FrameError::NonMinimalLength(len));
            }
            (len, 4)
        }
        127 => {
            let Some(len) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(len);
            let len = u64::from_be_bytes(bytes);
            if len >> 63 != 0 {
                return Err(FrameError::LengthHighBitSet);
            }
            if len <= u64::from(u16::MAX) {
                return Err(FrameError::NonMinimalLength(len));
            }
            (len, 10)
        }
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && payload_bytes > CONTROL_PAYLOAD_BYTES_MAX {
        return Err(FrameError::ControlFrameTooLong(payload_bytes));
    }
    let mask = if masked {
        let Some(key) = buf.get(header_bytes..header_bytes + 4) else {
            return Ok(None);
        };
        header_bytes += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        payload_bytes,
        header_bytes,
    }))
}

/// XORs `buf` with `mask` (RFC 6455 §5.3), where `buf` starts `offset` bytes into the payload.
/// Masking and unmasking are the same operation.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Decodes one complete frame and returns its header and unmasked payload.
    fn decode_frame(buf: &[u8]) -> (FrameHeader, Vec<u8>) {
        let header = decode_header(buf).unwrap().unwrap();
        let end = header.header_bytes + header.payload_bytes as usize;
        assert_eq!(end, buf.len(), "exactly one frame");
        let mut payload = buf[header.header_bytes..end].to_vec();
        if let Some(mask) = header.mask {
            apply_mask(&mut payload, mask, 0);
        }
        (header, payload)
    }

    #[test]
    fn rfc_6455_masked_hello_matches_section_5_7() {
        let mut out = Vec::new();
        encode_client_frame(Opcode::Text, b"Hello", MASK, &mut out);
        assert_eq!(
            out,
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
    }

    #[test]
    fn client_frames_round_trip_at_every_length_encoding() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut out = Vec::new();
            encode_client_frame(Opcode::Binary, &payload, MASK, &mut out);
            let (header, decoded) = decode_frame(&out);
            assert!(header.fin);
            assert_eq!(header.opcode, Opcode::Binary);
            assert_eq!(header.mask, Some(MASK));
            assert_eq!(header.payload_bytes, len as u64);
            assert_eq!(decoded, payload, "len {len}");
        }
    }

    #[test]
    fn unmasked_server_frame_decodes_without_key() {
        let mut out = Vec::new();
        encode_header(true, Opcode::Text, None, 3, &mut out);
        out.extend_from_slice(b"abc");
        let (header, payload) = decode_frame(&out);
        assert_eq!(header.mask, None);
        assert_eq!(header.header_bytes, 2);
        assert_eq!(payload, b"abc");
    }

    #[test]
    fn header_split_at_every_byte_asks_for_more() {
        let mut out = Vec::new();
        encode_header(false, Opcode::Binary, Some(MASK), 70_000, &mut out);
        assert_eq!(out.len(), HEADER_BYTES_MAX);
        for cut in 0..out.len() {
            assert_eq!(decode_header(&out[..cut]), Ok(None), "cut at {cut}");
        }
        let header = decode_header(&out).unwrap().unwrap();
        assert!(!header.fin);
        assert_eq!(header.header_bytes, HEADER_BYTES_MAX);
    }

    #[test]
    fn mask_applies_from_any_offset() {
        let payload = b"0123456789".to_vec();
        let mut whole = payload.clone();
        apply_mask(&mut whole, MASK, 0);
        let mut split = payload.clone();
        let (a, b) = split.split_at_mut(3);
        apply_mask(a, MASK, 0);
        apply_mask(b, MASK, 3);
        assert_eq!(split, whole);
    }

    #[test]
    fn broken_headers_name_the_rule() {
        assert_eq!(
            decode_header(&[0xC1, 0x00]),
            Err(FrameError::ReservedBitsSet(0x40))
        );
        assert_eq!(
            decode_header(&[0x83, 0x00]),
            Err(FrameError::ReservedOpcode(3))
        );
        assert_eq!(
            decode_header(&[0x09, 0x00]),
            Err(FrameError::FragmentedControlFrame)
        );
        assert_eq!(
            decode_header(&[0x89, 126, 0, 126]),
            Err(FrameError::ControlFrameTooLong(126))
        );
        assert_eq!(
            decode_header(&[0x82, 126, 0, 5]),
            Err(FrameError::NonMinimalLength(5))
        );
        assert_eq!(
            decode_header(&[0x82, 127, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(FrameError::NonMinimalLength(256))
        );
        assert_eq!(
            decode_header(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::LengthHighBitSet)
        );
    }
}
