//! Per-connection incremental RFC 6455 frame and message decoder; never does I/O, never panics
//! on peer bytes, and never holds more than the configured limits out of line.
//!
//! Call contract (sans-IO, in the manner of quinn-proto and rustls' unbuffered API): the caller
//! hands in bytes that arrived from the client with [`Decoder::handle_bytes`] and gets back how
//! many it consumed and at most one [`Event`]. The caller never keeps leftovers: either an event
//! is returned (handle it, then call again with the rest), or every byte was absorbed.
//!
//! Memory: the idle decoder is a small inline record (a partial header lives inline). A frame
//! split across calls, a fragmented message, or a control frame split across calls lives out of
//! line in one boxed `Spill`, released at the start of the call after its message is delivered.

use crate::proto::close::{self, CloseFrame};
use crate::proto::error::ProtocolError;
use crate::proto::frame::{self, FrameHeader, MAX_HEADER_BYTES, Opcode};
use crate::proto::utf8::Utf8Validator;

/// Bounds the decoder enforces, each checked before the bytes it bounds are buffered.
#[derive(Debug, Clone, Copy)]
pub struct DecoderLimits {
    /// Largest payload one frame may declare, in bytes. Checked on the header, before any payload
    /// is read; over it the connection closes with 1009.
    pub frame_bytes_max: u64,
    /// Largest message, in bytes, summed over its fragments. Checked on each frame header against
    /// the running total plus the declared length; over it the connection closes with 1009.
    pub message_bytes_max: u64,
    /// Most continuation frames one data message may have (an unfragmented message has none).
    /// Over it the connection closes with 1009. Counting continuations rather than frames lets
    /// a message of exactly N equal fragments after an empty opening frame (as Autobahn 9.4.1
    /// sends: 4 MiB in 65,536 fragments of 64 bytes) fit a limit of N.
    pub message_fragments_max: u32,
}

/// One complete thing the client sent. Text is already validated as UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    Close(CloseFrame<'a>),
}

/// Per-connection incremental decoder (see the module docs for the call contract).
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes of a header that was cut off by the end of the previous input.
    head: [u8; MAX_HEADER_BYTES],
    /// INVARIANT: `head_len < MAX_HEADER_BYTES` and `decode_header(&head[..head_len])` is
    /// `Ok(None)`.
    head_len: u8,
    /// Set on the first error; every later call returns it again.
    error: Option<ProtocolError>,
    /// Out-of-line state; `None` whenever no partial frame or message is held.
    spill: Option<Box<Spill>>,
}

impl Decoder {
    /// An idle decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes that arrived from the client and returns `(consumed, event)`.
    ///
    /// - `(n, Some(event))` as soon as one event is complete: handle it, then call again with
    ///   `input[n..]`.
    /// - `(input.len(), None)` when every byte was absorbed into state. It never returns fewer
    ///   than `input.len()` bytes consumed without an event.
    ///
    /// A complete unfragmented frame that lies wholly in `input` is unmasked in place and the
    /// event borrows `input` (zero copy); reassembled messages and frames split across calls
    /// borrow the decoder's out-of-line buffer. Text is validated as it arrives and fails fast.
    /// After an `Err` the decoder is poisoned: every later call returns the same error.
    pub fn handle_bytes<'a>(
        &'a mut self,
        input: &'a mut [u8],
        limits: &DecoderLimits,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        self.release_delivered();
        let (consumed, ready) = match self.step(input, limits) {
            Ok(result) => result,
            Err(error) => return Err(self.poison(error)),
        };
        debug_assert!(consumed <= input.len());
        debug_assert!(ready.is_some() || consumed == input.len());
        let Some(ready) = ready else {
            return Ok((consumed, None));
        };
        let payload: &'a [u8] = match ready.source {
            // `step` returns ranges inside `input` that it has already unmasked.
            Source::Input(start, end) => input.get(start..end).unwrap_or_default(),
            Source::Message => self.spill.as_deref().map_or(&[], |spill| &spill.message),
            Source::Control => self.spill.as_deref().map_or(&[], |spill| &spill.control),
        };
        let event = match ready.opcode {
            Opcode::Text => Event::Text(payload),
            Opcode::Binary | Opcode::Continuation => Event::Binary(payload),
            Opcode::Ping => Event::Ping(payload),
            Opcode::Pong => Event::Pong(payload),
            Opcode::Close => match close::parse_close_payload(payload) {
                Ok(close_frame) => Event::Close(close_frame),
                Err(error) => {
                    // Unreachable: `step` already parsed this body. Should it happen, poison
                    // anyway; `payload` may borrow `spill`, so it is freed with the decoder.
                    debug_assert!(false, "close body passed `step` but not `handle_bytes`");
                    self.error = Some(error.clone());
                    return Err(error);
                }
            },
        };
        Ok((consumed, Some(event)))
    }

    /// True when no partial header, frame or message is held (nothing out of line).
    ///
    /// A message delivered from the out-of-line buffer is released at the start of the next
    /// `handle_bytes` call (an empty input will do).
    pub fn is_idle(&self) -> bool {
        self.head_len == 0 && self.spill.is_none()
    }

    /// Bytes currently held out of line (for the shard's memory budget).
    pub fn buffered_bytes(&self) -> usize {
        self.spill.as_deref().map_or(0, |spill| {
            std::mem::size_of::<Spill>() + spill.message.capacity() + spill.control.capacity()
        })
    }

    /// Decodes frames from `input` until one event is ready or the input runs out.
    fn step(
        &mut self,
        input: &mut [u8],
        limits: &DecoderLimits,
    ) -> Result<(usize, Option<Ready>), ProtocolError> {
        let mut pos = 0;
        loop {
            if let Some(spill) = self.spill.as_deref_mut()
                && spill.frame.is_some()
            {
                let rest = input.get_mut(pos..).unwrap_or_default();
                let (taken, ready) = spill.continue_frame(rest)?;
                pos += taken;
                match ready {
                    Some(ready) => return Ok((pos, Some(ready))),
                    None if spill.frame.is_some() => {
                        debug_assert_eq!(pos, input.len());
                        return Ok((input.len(), None));
                    }
                    None => continue,
                }
            }
            if pos == input.len() {
                return Ok((pos, None));
            }
            let Some((header, header_bytes)) =
                self.read_header(input.get(pos..).unwrap_or_default())?
            else {
                return Ok((input.len(), None));
            };
            pos += header_bytes;
            self.check_header(&header, limits)?;
            // `check_header` rejected unmasked frames, so the default is never used.
            let mask = header.mask.unwrap_or_default();
            let message_open = self.open_message_opcode().is_some();
            let available = input.len() - pos;
            let whole = usize::try_from(header.payload_len)
                .ok()
                .filter(|&len| len <= available);
            // Zero copy: a control frame, or an unfragmented data message, wholly in `input`.
            let zero_copy = header.opcode.is_control() || (header.fin && !message_open);
            if let Some(len) = whole
                && zero_copy
                && header.opcode != Opcode::Continuation
            {
                let (start, end) = (pos, pos + len);
                pos = end;
                let payload = input.get_mut(start..end).unwrap_or_default();
                frame::apply_mask(payload, mask, 0);
                // RFC 6455 §8.1: a text message must be valid UTF-8.
                if header.opcode == Opcode::Text && simdutf8::basic::from_utf8(payload).is_err() {
                    return Err(ProtocolError::InvalidUtf8);
                }
                // RFC 6455 §5.5.1: check the close body here, so that an error poisons the
                // decoder through one path; `handle_bytes` parses it again to build the event.
                if header.opcode == Opcode::Close {
                    close::parse_close_payload(payload)?;
                }
                let ready = Ready {
                    opcode: header.opcode,
                    source: Source::Input(start, end),
                };
                return Ok((pos, Some(ready)));
            }
            self.spill
                .get_or_insert_with(Box::default)
                .begin_frame(&header, mask);
        }
    }

    /// Reads a header that starts at `rest`, joining it with bytes held from the last call.
    ///
    /// Returns the header and how many bytes of `rest` it used; `None` when `rest` ran out first,
    /// in which case all of `rest` is held inline.
    fn read_header(&mut self, rest: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let held = usize::from(self.head_len);
        if held == 0 {
            if let Some(header) = frame::decode_header(rest)? {
                return Ok(Some((header, header.header_len)));
            }
            return Ok(self.hold_header(0, rest));
        }
        let copied = (MAX_HEADER_BYTES - held).min(rest.len());
        let mut joined = self.head;
        joined[held..held + copied].copy_from_slice(&rest[..copied]);
        match frame::decode_header(&joined[..held + copied])? {
            Some(header) => {
                self.head_len = 0;
                // `header_len > held`: the held bytes alone decoded to `None`.
                Ok(Some((header, header.header_len.saturating_sub(held))))
            }
            None => Ok(self.hold_header(held, rest)),
        }
    }

    /// Appends `rest` to the inline partial header. Always returns `None` for `read_header`.
    fn hold_header(&mut self, held: usize, rest: &[u8]) -> Option<(FrameHeader, usize)> {
        // `decode_header` never asks for more once it has MAX_HEADER_BYTES, so this fits.
        let total = held + rest.len();
        debug_assert!(total < MAX_HEADER_BYTES);
        if let Some(dst) = self.head.get_mut(held..total) {
            dst.copy_from_slice(rest);
            // Cannot truncate: `total < MAX_HEADER_BYTES`.
            self.head_len = total as u8;
        }
        None
    }

    /// Connection-level rules for a header that `decode_header` accepted.
    fn check_header(
        &self,
        header: &FrameHeader,
        limits: &DecoderLimits,
    ) -> Result<(), ProtocolError> {
        // RFC 6455 §5.1: "The server MUST close the connection upon receiving a frame that is
        // not masked."
        if header.mask.is_none() {
            return Err(ProtocolError::UnmaskedClientFrame);
        }
        if header.payload_len > limits.frame_bytes_max {
            return Err(ProtocolError::FrameTooLarge {
                len: header.payload_len,
                max: limits.frame_bytes_max,
            });
        }
        // RFC 6455 §5.4: control frames may be injected in the middle of a fragmented message.
        if header.opcode.is_control() {
            return Ok(());
        }
        let spill = self.spill.as_deref();
        let open = self.open_message_opcode();
        let (fragment_count, held_bytes) = match (header.opcode, open, spill) {
            (Opcode::Continuation, Some(_), Some(spill)) => (
                spill.fragment_count.saturating_add(1),
                spill.message.len() as u64,
            ),
            // RFC 6455 §5.4: a fragmented message starts with a text or binary frame.
            (Opcode::Continuation, _, _) => return Err(ProtocolError::UnexpectedContinuation),
            // RFC 6455 §5.4: fragments of one message are not interleaved with another message.
            (_, Some(_), _) => return Err(ProtocolError::ExpectedContinuation),
            _ => (0, 0),
        };
        if fragment_count > limits.message_fragments_max {
            return Err(ProtocolError::TooManyFragments {
                count: fragment_count,
                max: limits.message_fragments_max,
            });
        }
        let message_bytes = held_bytes.saturating_add(header.payload_len);
        if message_bytes > limits.message_bytes_max {
            return Err(ProtocolError::MessageTooLarge {
                len: message_bytes,
                max: limits.message_bytes_max,
            });
        }
        Ok(())
    }

    /// The opcode of the fragmented data message waiting for continuations, if any.
    fn open_message_opcode(&self) -> Option<Opcode> {
        self.spill.as_deref().and_then(|spill| spill.message_opcode)
    }

    /// Frees what the previous call's event borrowed, and the spill once nothing is in it.
    fn release_delivered(&mut self) {
        let Some(spill) = self.spill.as_deref_mut() else {
            return;
        };
        if spill.frame.is_some() {
            return;
        }
        if spill.message_opcode.is_none() {
            self.spill = None;
        } else {
            spill.control.clear();
        }
    }

    /// Records `error` so later calls repeat it, and frees everything held.
    fn poison(&mut self, error: ProtocolError) -> ProtocolError {
        self.error = Some(error.clone());
        self.spill = None;
        self.head_len = 0;
        error
    }
}

/// Out-of-line state: a frame whose payload is still arriving and the message being assembled.
#[derive(Debug, Default)]
struct Spill {
    /// The frame whose payload is still arriving, if any.
    frame: Option<PartialFrame>,
    /// Text or Binary while a data message is being assembled here; taken when it is delivered.
    message_opcode: Option<Opcode>,
    /// Frames received so far for the message being assembled.
    fragment_count: u32,
    /// Unmasked payload of the message being assembled.
    /// INVARIANT: `message.len() <= DecoderLimits::message_bytes_max` (checked per header).
    message: Vec<u8>,
    /// Validates a text message as its bytes arrive.
    utf8: Utf8Validator,
    /// Unmasked payload of a control frame split across calls (at most 125 bytes).
    control: Vec<u8>,
}

/// A frame header whose payload has only partly arrived.
#[derive(Debug, Clone, Copy)]
struct PartialFrame {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    payload_len: u64,
    /// INVARIANT: `received_bytes <= payload_len`.
    received_bytes: u64,
}

impl Spill {
    /// Starts buffering the payload of a checked frame.
    fn begin_frame(&mut self, header: &FrameHeader, mask: [u8; 4]) {
        debug_assert!(self.frame.is_none());
        match header.opcode {
            Opcode::Text | Opcode::Binary => {
                self.message_opcode = Some(header.opcode);
                self.fragment_count = 0;
                self.message.clear();
                self.utf8 = Utf8Validator::default();
            }
            Opcode::Continuation => self.fragment_count = self.fragment_count.saturating_add(1),
            Opcode::Close | Opcode::Ping | Opcode::Pong => self.control.clear(),
        }
        self.frame = Some(PartialFrame {
            fin: header.fin,
            opcode: header.opcode,
            mask,
            payload_len: header.payload_len,
            received_bytes: 0,
        });
    }

    /// Unmasks and absorbs as much of the current frame's payload as `rest` holds.
    ///
    /// Returns the bytes taken and the event if this completed a control frame or a message.
    fn continue_frame(&mut self, rest: &mut [u8]) -> Result<(usize, Option<Ready>), ProtocolError> {
        let Some(frame) = self.frame.as_mut() else {
            return Ok((0, None));
        };
        let remaining = frame.payload_len - frame.received_bytes;
        let taken = usize::try_from(remaining).map_or(rest.len(), |left| left.min(rest.len()));
        let piece = rest.get_mut(..taken).unwrap_or_default();
        // Only `offset % 4` matters to the mask.
        frame::apply_mask(piece, frame.mask, (frame.received_bytes % 4) as usize);
        if frame.opcode.is_control() {
            self.control.extend_from_slice(piece);
        } else {
            // RFC 6455 §8.1: fail fast on invalid UTF-8, even in the middle of a frame.
            if self.message_opcode == Some(Opcode::Text) {
                self.utf8.feed(piece)?;
            }
            self.message.extend_from_slice(piece);
        }
        frame.received_bytes += taken as u64;
        if frame.received_bytes < frame.payload_len {
            return Ok((taken, None));
        }
        let (fin, opcode) = (frame.fin, frame.opcode);
        self.frame = None;
        if opcode.is_control() {
            if opcode == Opcode::Close {
                close::parse_close_payload(&self.control)?;
            }
            let ready = Ready {
                opcode,
                source: Source::Control,
            };
            return Ok((taken, Some(ready)));
        }
        if !fin {
            return Ok((taken, None));
        }
        let message_opcode = self.message_opcode.take().unwrap_or(Opcode::Binary);
        if message_opcode == Opcode::Text {
            self.utf8.finish()?;
        }
        let ready = Ready {
            opcode: message_opcode,
            source: Source::Message,
        };
        Ok((taken, Some(ready)))
    }
}

/// An event that `step` found, before it is turned into a borrowing [`Event`].
#[derive(Debug, Clone, Copy)]
struct Ready {
    opcode: Opcode,
    source: Source,
}

/// Where a ready event's payload lives.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// `input[start..end]`, already unmasked in place.
    Input(usize, usize),
    /// `Spill::message`.
    Message,
    /// `Spill::control`.
    Control,
}

/// An owned copy of an [`Event`], for comparing decoder runs.
#[cfg(any(test, fuzzing))]
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnedEvent {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

#[cfg(any(test, fuzzing))]
impl From<Event<'_>> for OwnedEvent {
    fn from(event: Event<'_>) -> Self {
        match event {
            Event::Text(payload) => Self::Text(payload.to_vec()),
            Event::Binary(payload) => Self::Binary(payload.to_vec()),
            Event::Ping(payload) => Self::Ping(payload.to_vec()),
            Event::Pong(payload) => Self::Pong(payload.to_vec()),
            Event::Close(close) => Self::Close(close.code, close.reason.to_owned()),
        }
    }
}

/// Everything a decoder produced for one input stream.
#[cfg(any(test, fuzzing))]
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    events: Vec<OwnedEvent>,
    error: Option<ProtocolError>,
}

/// Runs a fresh decoder over `data` cut into chunks of the lengths `chunk_lens` yields (a final
/// chunk takes what is left), checking the call contract on every call.
#[cfg(any(test, fuzzing))]
fn decode_chunked(
    data: &[u8],
    limits: &DecoderLimits,
    mut chunk_lens: impl FnMut() -> usize,
) -> Outcome {
    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    let mut rest = data;
    loop {
        let len = chunk_lens().min(rest.len());
        let (chunk, after) = rest.split_at(len);
        rest = after;
        let mut buf = chunk.to_vec();
        let mut pos = 0;
        loop {
            match decoder.handle_bytes(&mut buf[pos..], limits) {
                Ok((consumed, Some(event))) => {
                    events.push(OwnedEvent::from(event));
                    pos += consumed;
                    assert!(pos <= buf.len());
                }
                Ok((consumed, None)) => {
                    assert_eq!(
                        pos + consumed,
                        buf.len(),
                        "bytes left over without an event"
                    );
                    break;
                }
                Err(error) => {
                    // Poisoned: the same error again, even for no input.
                    assert_eq!(
                        decoder.handle_bytes(&mut [], limits).err(),
                        Some(error.clone())
                    );
                    return Outcome {
                        events,
                        error: Some(error),
                    };
                }
            }
        }
        if rest.is_empty() {
            // An empty call releases whatever the last event borrowed.
            let (consumed, event) = decoder.handle_bytes(&mut [], limits).unwrap();
            assert_eq!((consumed, event), (0, None));
            // Nothing delivered may linger: what is left out of line is a frame or message
            // still in progress.
            if let Some(spill) = decoder.spill.as_deref() {
                assert!(spill.frame.is_some() || spill.message_opcode.is_some());
            }
            assert_eq!(
                decoder.is_idle(),
                decoder.head_len == 0 && decoder.buffered_bytes() == 0
            );
            return Outcome {
                events,
                error: None,
            };
        }
    }
}

/// Fuzz entry point: decodes `data` whole, byte at a time and in data-driven chunks, and checks
/// all three give the same events and error.
///
/// The first byte picks the limits, the second seeds the chunk lengths.
#[cfg(any(test, fuzzing))]
pub fn fuzz_decoder(data: &[u8]) {
    let [limit_seed, split_seed, stream @ ..] = data else {
        return;
    };
    let limits = DecoderLimits {
        frame_bytes_max: u64::from(limit_seed & 0x0F) * 16 + 1,
        message_bytes_max: u64::from(limit_seed >> 4) * 32 + 1,
        message_fragments_max: u32::from(limit_seed % 5) + 1,
    };
    let whole = decode_chunked(stream, &limits, || usize::MAX);
    let bytewise = decode_chunked(stream, &limits, || 1);
    assert_eq!(whole, bytewise);
    let mut state = u32::from(*split_seed) | 1;
    let chunked = decode_chunked(stream, &limits, || {
        // xorshift32: chunk lengths 0-31, so empty inputs are exercised too.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 32) as usize
    });
    assert_eq!(whole, chunked);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// Cases per random test; raise locally for a longer soak (20 000 passed).
    const RANDOM_CASE_COUNT: usize = 300;
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    const LIMITS: DecoderLimits = DecoderLimits {
        frame_bytes_max: 1 << 20,
        message_bytes_max: 1 << 20,
        message_fragments_max: 64,
    };

    /// A masked client frame with an arbitrary first byte (FIN, RSV, opcode) and payload.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let len = payload.len();
        if len <= 125 {
            out.push(0x80 | len as u8);
        } else if let Ok(short) = u16::try_from(len) {
            out.push(0x80 | 126);
            out.extend_from_slice(&short.to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&MASK);
        let start = out.len();
        out.extend_from_slice(payload);
        frame::apply_mask(&mut out[start..], MASK, 0);
        out
    }

    fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    fn text(payload: &[u8]) -> OwnedEvent {
        OwnedEvent::Text(payload.to_vec())
    }

    fn binary(payload: &[u8]) -> OwnedEvent {
        OwnedEvent::Binary(payload.to_vec())
    }

    /// Decodes `data` whole, split in two at every boundary (or at a sample of boundaries for
    /// large inputs), and byte at a time, asserting every run gives the same outcome, and
    /// returns it.
    fn decode_every_split(data: &[u8], limits: &DecoderLimits) -> Outcome {
        let whole = decode_chunked(data, limits, || usize::MAX);
        let bytewise = decode_chunked(data, limits, || 1);
        assert_eq!(bytewise, whole, "byte at a time");
        let stride = if data.len() > 600 { 997 } else { 1 };
        let splits = (0..=data.len().min(32))
            .chain((0..=data.len()).step_by(stride))
            .chain(data.len().saturating_sub(32)..=data.len());
        for split in splits {
            let mut first = Some(split);
            let outcome = decode_chunked(data, limits, || first.take().unwrap_or(usize::MAX));
            assert_eq!(outcome, whole, "split at {split}");
        }
        whole
    }

    fn assert_events(data: &[u8], limits: &DecoderLimits, events: &[OwnedEvent]) {
        let outcome = decode_every_split(data, limits);
        assert_eq!(outcome.error, None);
        assert_eq!(outcome.events, events);
    }

    fn assert_error(data: &[u8], limits: &DecoderLimits, error: ProtocolError, code: u16) {
        let outcome = decode_every_split(data, limits);
        assert_eq!(outcome.error, Some(error));
        assert_eq!(outcome.error.unwrap().close_code(), code);
    }

    #[test]
    fn decoder_record_is_at_most_48_bytes() {
        assert!(std::mem::size_of::<Decoder>() <= 48);
    }

    #[test]
    fn rfc_6455_section_5_7_examples_decode_at_every_split() {
        // Masked "Hello", exactly as in RFC 6455 §5.7.
        let hello = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
        assert_events(hello, &LIMITS, &[text(b"Hello")]);
        // Masked pong "Hello", exactly as in RFC 6455 §5.7.
        let pong = b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
        assert_events(pong, &LIMITS, &[OwnedEvent::Pong(b"Hello".to_vec())]);
        // The fragmented "Hel" + "lo" and ping "Hello", masked as a client must send them.
        let fragmented = concat(&[masked(0x01, b"Hel"), masked(0x80, b"lo")]);
        assert_events(&fragmented, &LIMITS, &[text(b"Hello")]);
        let ping = masked(0x89, b"Hello");
        assert_events(&ping, &LIMITS, &[OwnedEvent::Ping(b"Hello".to_vec())]);
        // 256-byte and 64 KiB binary messages in single frames.
        let payload_256: Vec<u8> = (0..256).map(|i| i as u8).collect();
        let frame_256 = masked(0x82, &payload_256);
        assert_eq!(frame_256[..4], [0x82, 0xFE, 0x01, 0x00]);
        assert_events(&frame_256, &LIMITS, &[binary(&payload_256)]);
        let payload_64k: Vec<u8> = (0..65536).map(|i| (i % 251) as u8).collect();
        let frame_64k = masked(0x82, &payload_64k);
        assert_eq!(
            frame_64k[..10],
            *b"\x82\xFF\x00\x00\x00\x00\x00\x01\x00\x00"
        );
        assert_events(&frame_64k, &LIMITS, &[binary(&payload_64k)]);
    }

    #[test]
    fn rfc_6455_unmasked_examples_close_with_1002() {
        for frame in [&b"\x81\x05Hello"[..], b"\x01\x03Hel", b"\x89\x05Hello"] {
            assert_error(frame, &LIMITS, ProtocolError::UnmaskedClientFrame, 1002);
        }
    }

    #[test]
    fn every_error_variant_closes_with_its_code() {
        let small = DecoderLimits {
            frame_bytes_max: 10,
            message_bytes_max: 12,
            message_fragments_max: 2,
        };
        let table: [(Vec<u8>, ProtocolError, u16); 15] = [
            (
                b"\x81\x05Hello".to_vec(),
                ProtocolError::UnmaskedClientFrame,
                1002,
            ),
            (masked(0xC1, b"hi"), ProtocolError::ReservedBitsSet, 1002),
            (masked(0x83, b"hi"), ProtocolError::UnknownOpcode(3), 1002),
            (
                masked(0x89, &[0; 126]),
                ProtocolError::ControlFrameTooLong { len: 126 },
                1002,
            ),
            (
                masked(0x09, b"hi"),
                ProtocolError::FragmentedControlFrame,
                1002,
            ),
            (
                b"\x82\xFF\x80\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04".to_vec(),
                ProtocolError::LengthTopBitSet,
                1002,
            ),
            (
                masked(0x82, &[0; 11]),
                ProtocolError::FrameTooLarge { len: 11, max: 10 },
                1009,
            ),
            (
                concat(&[masked(0x02, &[0; 7]), masked(0x80, &[0; 6])]),
                ProtocolError::MessageTooLarge { len: 13, max: 12 },
                1009,
            ),
            (
                concat(&[
                    masked(0x02, b"a"),
                    masked(0x00, b"b"),
                    masked(0x00, b"c"),
                    masked(0x80, b"d"),
                ]),
                ProtocolError::TooManyFragments { count: 3, max: 2 },
                1009,
            ),
            (
                masked(0x80, b"lo"),
                ProtocolError::UnexpectedContinuation,
                1002,
            ),
            (
                concat(&[masked(0x01, b"Hel"), masked(0x81, b"lo")]),
                ProtocolError::ExpectedContinuation,
                1002,
            ),
            (masked(0x81, b"a\xffb"), ProtocolError::InvalidUtf8, 1007),
            (
                masked(0x88, b"\x03"),
                ProtocolError::InvalidClosePayloadLength,
                1002,
            ),
            (
                masked(0x88, b"\x03\xed"),
                ProtocolError::InvalidCloseCode(1005),
                1002,
            ),
            (
                masked(0x88, b"\x03\xe8\xff"),
                ProtocolError::InvalidCloseReason,
                1007,
            ),
        ];
        for (data, error, code) in table {
            assert_error(&data, &small, error, code);
        }
    }

    #[test]
    fn control_frames_between_fragments_arrive_in_order() {
        let data = concat(&[
            masked(0x01, b"Hel"),
            masked(0x89, b"ping"),
            masked(0x00, b""),
            masked(0x8A, b"pong"),
            masked(0x80, b"lo"),
            masked(0x88, b"\x03\xe8bye"),
        ]);
        assert_events(
            &data,
            &LIMITS,
            &[
                OwnedEvent::Ping(b"ping".to_vec()),
                OwnedEvent::Pong(b"pong".to_vec()),
                text(b"Hello"),
                OwnedEvent::Close(Some(1000), "bye".to_owned()),
            ],
        );
    }

    #[test]
    fn ping_of_125_bytes_is_accepted() {
        assert_events(
            &masked(0x89, &[7; 125]),
            &LIMITS,
            &[OwnedEvent::Ping(vec![7; 125])],
        );
    }

    #[test]
    fn ping_over_125_bytes_closes_with_1002() {
        let error = ProtocolError::ControlFrameTooLong { len: 126 };
        assert_error(&masked(0x89, &[7; 126]), &LIMITS, error, 1002);
    }

    #[test]
    fn length_with_top_bit_set_closes_with_1002() {
        let data = b"\x82\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\x01\x02\x03\x04";
        assert_error(data, &LIMITS, ProtocolError::LengthTopBitSet, 1002);
    }

    #[test]
    fn frame_exactly_at_the_limit_passes_and_one_past_closes_with_1009() {
        let limits = DecoderLimits {
            frame_bytes_max: 10,
            ..LIMITS
        };
        assert_events(&masked(0x82, &[1; 10]), &limits, &[binary(&[1; 10])]);
        let fragmented = concat(&[masked(0x02, &[1; 10]), masked(0x80, &[2; 10])]);
        let mut expected = vec![1; 10];
        expected.extend_from_slice(&[2; 10]);
        assert_events(&fragmented, &limits, &[binary(&expected)]);
        let error = ProtocolError::FrameTooLarge { len: 11, max: 10 };
        assert_error(&masked(0x82, &[1; 11]), &limits, error, 1009);
    }

    #[test]
    fn message_exactly_at_the_limit_passes_and_one_past_closes_with_1009() {
        let limits = DecoderLimits {
            message_bytes_max: 10,
            ..LIMITS
        };
        let at = concat(&[masked(0x01, b"abcde"), masked(0x80, b"fghij")]);
        assert_events(&at, &limits, &[text(b"abcdefghij")]);
        let past = concat(&[masked(0x01, b"abcde"), masked(0x80, b"fghijk")]);
        let error = ProtocolError::MessageTooLarge { len: 11, max: 10 };
        assert_error(&past, &limits, error.clone(), 1009);
        let single = masked(0x81, b"abcdefghijk");
        assert_error(&single, &limits, error, 1009);
    }

    #[test]
    fn fragments_exactly_at_the_limit_pass_and_one_past_closes_with_1009() {
        let limits = DecoderLimits {
            message_fragments_max: 3,
            ..LIMITS
        };
        // Three continuations after the opening frame: at the limit.
        let at = concat(&[
            masked(0x02, b"a"),
            masked(0x00, b"b"),
            masked(0x00, b"c"),
            masked(0x80, b"d"),
        ]);
        assert_events(&at, &limits, &[binary(b"abcd")]);
        let past = concat(&[
            masked(0x02, b"a"),
            masked(0x00, b"b"),
            masked(0x00, b"c"),
            masked(0x00, b"d"),
            masked(0x80, b"e"),
        ]);
        let error = ProtocolError::TooManyFragments { count: 4, max: 3 };
        assert_error(&past, &limits, error, 1009);
        // The count starts again with each message.
        let two_messages = concat(&[at.clone(), at]);
        assert_events(&two_messages, &limits, &[binary(b"abcd"), binary(b"abcd")]);
    }

    #[test]
    fn utf8_split_across_fragments_is_valid() {
        // U+20AC split 1 + 2 bytes and U+1F600 split 3 + 1 bytes across fragments.
        let data = concat(&[
            masked(0x01, b"a\xe2"),
            masked(0x00, b"\x82\xac\xf0\x9f\x98"),
            masked(0x80, b"\x80z"),
        ]);
        assert_events(&data, &LIMITS, &[text("a\u{20ac}\u{1f600}z".as_bytes())]);
    }

    #[test]
    fn invalid_utf8_closes_with_1007_across_fragments() {
        let table: [Vec<u8>; 6] = [
            // Overlong encoding of '/'.
            concat(&[masked(0x01, b"a\xe0"), masked(0x80, b"\x80\xaf")]),
            // U+D800, a surrogate.
            concat(&[masked(0x01, b"\xed"), masked(0x80, b"\xa0\x80")]),
            // U+110000, beyond U+10FFFF.
            concat(&[masked(0x01, b"\xf4\x90"), masked(0x80, b"\x80\x80")]),
            // A code point left incomplete at the end of the message.
            concat(&[masked(0x01, b"ok"), masked(0x80, b"\xe2\x82")]),
            // Unfragmented: overlong NUL, and a truncated sequence.
            masked(0x81, b"\xc0\x80"),
            masked(0x81, b"ab\xf0\x9f"),
        ];
        for data in table {
            assert_error(&data, &LIMITS, ProtocolError::InvalidUtf8, 1007);
        }
    }

    #[test]
    fn invalid_utf8_fails_fast_in_the_middle_of_a_frame() {
        // A 100-byte text frame whose third byte can never be valid: the error comes with the
        // bytes that show it, long before the frame is complete.
        let mut payload = b"ab\xff".to_vec();
        payload.resize(100, b'x');
        let data = masked(0x81, &payload);
        let mut decoder = Decoder::new();
        let mut first = data[..6 + 2].to_vec();
        assert!(matches!(
            decoder.handle_bytes(&mut first, &LIMITS),
            Ok((8, None))
        ));
        let mut next = data[8..9].to_vec();
        assert_eq!(
            decoder.handle_bytes(&mut next, &LIMITS).err(),
            Some(ProtocolError::InvalidUtf8)
        );
        // The same across a fragment boundary: the first byte of the second fragment is bad.
        let data = concat(&[masked(0x01, b"\xe2\x82"), masked(0x80, &[b'A'; 50])]);
        let mut decoder = Decoder::new();
        let mut input = data[..6 + 2 + 6 + 1].to_vec();
        assert_eq!(
            decoder.handle_bytes(&mut input, &LIMITS).err(),
            Some(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn poisoned_decoder_repeats_its_error() {
        let mut decoder = Decoder::new();
        let mut bad = masked(0x80, b"x");
        let error = decoder.handle_bytes(&mut bad, &LIMITS).err();
        assert_eq!(error, Some(ProtocolError::UnexpectedContinuation));
        let mut good = masked(0x81, b"fine");
        assert_eq!(decoder.handle_bytes(&mut good, &LIMITS).err(), error);
        assert!(decoder.is_idle());
    }

    #[test]
    fn split_close_with_invalid_reason_poisons_and_frees_the_buffer() {
        let data = masked(0x88, b"\x03\xe8bad \xff");
        let mut decoder = Decoder::new();
        let mut first = data[..8].to_vec();
        assert!(matches!(
            decoder.handle_bytes(&mut first, &LIMITS),
            Ok((8, None))
        ));
        assert!(decoder.buffered_bytes() > 0);
        let mut rest = data[8..].to_vec();
        let error = decoder.handle_bytes(&mut rest, &LIMITS).err();
        assert_eq!(error, Some(ProtocolError::InvalidCloseReason));
        assert_eq!(decoder.buffered_bytes(), 0);
        assert_eq!(decoder.handle_bytes(&mut [], &LIMITS).err(), error);
    }

    #[test]
    fn whole_unfragmented_frame_is_unmasked_in_place_without_buffering() {
        let mut data = concat(&[masked(0x82, b"zero copy"), masked(0x89, b"ping")]);
        let input_range = data.as_ptr_range();
        let mut decoder = Decoder::new();
        let (consumed, event) = decoder.handle_bytes(&mut data, &LIMITS).unwrap();
        assert_eq!(consumed, 6 + 9);
        let Some(Event::Binary(payload)) = event else {
            panic!("expected binary, got {event:?}");
        };
        assert_eq!(payload, b"zero copy");
        assert!(input_range.contains(&payload.as_ptr()));
        assert!(decoder.is_idle());
        assert_eq!(decoder.buffered_bytes(), 0);
        let (consumed, event) = decoder.handle_bytes(&mut data[15..], &LIMITS).unwrap();
        assert_eq!((consumed, event), (10, Some(Event::Ping(b"ping"))));
    }

    #[test]
    fn split_frame_is_buffered_out_of_line_then_released() {
        let data = masked(0x82, &[5; 300]);
        let mut decoder = Decoder::new();
        let mut first = data[..3].to_vec();
        assert!(matches!(
            decoder.handle_bytes(&mut first, &LIMITS),
            Ok((3, None))
        ));
        assert!(!decoder.is_idle());
        assert_eq!(decoder.buffered_bytes(), 0, "a partial header stays inline");
        let mut second = data[3..200].to_vec();
        assert!(matches!(
            decoder.handle_bytes(&mut second, &LIMITS),
            Ok((197, None))
        ));
        assert!(decoder.buffered_bytes() >= 200 - 8);
        let mut third = data[200..].to_vec();
        let (consumed, event) = decoder.handle_bytes(&mut third, &LIMITS).unwrap();
        assert_eq!(
            (consumed, event),
            (data.len() - 200, Some(Event::Binary(&[5; 300])))
        );
        assert!(!decoder.is_idle());
        assert!(matches!(
            decoder.handle_bytes(&mut [], &LIMITS),
            Ok((0, None))
        ));
        assert!(decoder.is_idle());
        assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn empty_frames_and_close_without_body_decode() {
        let data = concat(&[
            masked(0x81, b""),
            masked(0x02, b""),
            masked(0x80, b""),
            masked(0x89, b""),
            masked(0x88, b""),
        ]);
        assert_events(
            &data,
            &LIMITS,
            &[
                text(b""),
                binary(b""),
                OwnedEvent::Ping(Vec::new()),
                OwnedEvent::Close(None, String::new()),
            ],
        );
    }

    #[test]
    fn random_text_split_into_fragments_matches_std_utf8() {
        let mut rng = Rng(0x853c_49e6_748f_ea9b);
        let pieces: [&[u8]; 8] = [
            b"a",
            b"\xc3\xa9",
            b"\xe2\x82\xac",
            b"\xf0\x9f\x98\x80",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"\xf4\x90\x80\x80",
            b"\xff",
        ];
        for _ in 0..RANDOM_CASE_COUNT {
            let mut payload = Vec::new();
            for _ in 0..rng.next() % 8 {
                // Mostly valid pieces, so that valid messages are common too.
                let index = match rng.next() % 10 {
                    0 => 4 + (rng.next() % 4) as usize,
                    _ => (rng.next() % 4) as usize,
                };
                payload.extend_from_slice(pieces[index]);
            }
            let fragment_count = 1 + (rng.next() % 3) as usize;
            let mut frames = Vec::new();
            let mut rest = &payload[..];
            for index in 0..fragment_count {
                let last = index + 1 == fragment_count;
                let len = if last {
                    rest.len()
                } else {
                    (rng.next() as usize) % (rest.len() + 1)
                };
                let (piece, after) = rest.split_at(len);
                rest = after;
                let opcode = if index == 0 { 0x01 } else { 0x00 };
                frames.push(masked(opcode | if last { 0x80 } else { 0 }, piece));
            }
            let outcome = decode_every_split(&concat(&frames), &LIMITS);
            match std::str::from_utf8(&payload) {
                Ok(_) => assert_eq!(outcome.events, [text(&payload)], "{payload:x?}"),
                Err(_) => assert_eq!(outcome.error, Some(ProtocolError::InvalidUtf8)),
            }
        }
    }

    #[test]
    fn random_streams_decode_alike_whole_bytewise_and_chunked() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let first_bytes = [0x81, 0x82, 0x01, 0x02, 0x00, 0x80, 0x88, 0x89, 0x8A];
        for _ in 0..RANDOM_CASE_COUNT {
            let mut data = vec![rng.next() as u8, rng.next() as u8];
            for _ in 0..rng.next() % 6 {
                let first = first_bytes[(rng.next() % first_bytes.len() as u64) as usize];
                let len = (rng.next() % 40) as usize;
                let payload: Vec<u8> = (0..len)
                    .map(|_| match rng.next() % 4 {
                        0 => rng.next() as u8,
                        _ => b'a' + (rng.next() % 26) as u8,
                    })
                    .collect();
                data.extend_from_slice(&masked(first, &payload));
            }
            if rng.next().is_multiple_of(8) {
                let index = (rng.next() % data.len() as u64) as usize;
                data[index] = rng.next() as u8;
            }
            fuzz_decoder(&data);
        }
    }
}
