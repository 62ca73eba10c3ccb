//! Streaming UTF-8 validation across reads and fragments (RFC 6455 §5.6, §8.1); never allocates.
//!
//! A text message may be split anywhere, even inside a code point, so the validator carries at
//! most 3 bytes of an incomplete sequence between calls. It fails fast: the first byte that can
//! never be part of valid UTF-8 is an error, without waiting for the end of the message.

use crate::proto::error::ProtocolError;

/// Incremental UTF-8 validator. Idle state is all zeros; it holds at most 4 bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Validator {
    /// Leading bytes of a sequence that was cut off by the end of the previous chunk.
    pending: [u8; 3],
    /// INVARIANT: `pending_len <= 3`, and `pending[..pending_len]` is a valid UTF-8 prefix that is
    /// not a complete sequence.
    pending_len: u8,
}

impl Utf8Validator {
    /// Validates the next chunk of the message.
    ///
    /// Returns `Err` as soon as a byte sequence is seen that can never become valid (fail fast),
    /// `Ok` if everything so far is valid UTF-8 or a valid prefix of it.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        let rest = self.complete_pending(bytes)?;
        match simdutf8::compat::from_utf8(rest) {
            Ok(_) => Ok(()),
            // `error_len() == None` means the input ended inside a sequence that is still a valid
            // prefix; anything else is a definite error.
            Err(error) if error.error_len().is_none() => {
                let tail = rest.get(error.valid_up_to()..).unwrap_or_default();
                self.hold(tail)
            }
            Err(_) => Err(ProtocolError::InvalidUtf8),
        }
    }

    /// Ends the message: `Err` if a code point was left incomplete. Resets the validator.
    pub fn finish(&mut self) -> Result<(), ProtocolError> {
        let incomplete = self.pending_len != 0;
        *self = Self::default();
        if incomplete {
            return Err(ProtocolError::InvalidUtf8);
        }
        Ok(())
    }

    /// Completes a sequence held from the previous chunk with the first bytes of `bytes`, and
    /// returns the bytes that follow it.
    fn complete_pending<'b>(&mut self, bytes: &'b [u8]) -> Result<&'b [u8], ProtocolError> {
        let held = usize::from(self.pending_len);
        if held == 0 {
            return Ok(bytes);
        }
        // At most 4 bytes: a code point is 1-4 bytes and the pending part is a strict prefix.
        let mut sequence = [0u8; 4];
        let pending = self.pending.get(..held).unwrap_or_default();
        let needed = sequence_len(self.pending[0]).saturating_sub(held);
        let taken = needed.min(bytes.len());
        let (head, rest) = bytes.split_at(taken);
        let total = held + taken;
        sequence[..held].copy_from_slice(pending);
        sequence[held..total].copy_from_slice(head);
        self.pending_len = 0;
        match simdutf8::compat::from_utf8(&sequence[..total]) {
            Ok(_) => Ok(rest),
            Err(error) if error.error_len().is_none() => {
                // Still incomplete, which means `bytes` ran out: hold the longer prefix.
                debug_assert!(rest.is_empty());
                self.hold(&sequence[..total])?;
                Ok(rest)
            }
            Err(_) => Err(ProtocolError::InvalidUtf8),
        }
    }

    /// Keeps an incomplete (but so far valid) sequence for the next chunk.
    fn hold(&mut self, tail: &[u8]) -> Result<(), ProtocolError> {
        // A valid prefix is at most 3 bytes; anything longer would be an error in the caller.
        let Some(dst) = self.pending.get_mut(..tail.len()) else {
            debug_assert!(false, "incomplete UTF-8 tail longer than 3 bytes");
            return Err(ProtocolError::InvalidUtf8);
        };
        dst.copy_from_slice(tail);
        // Cannot truncate: `tail.len() <= 3` was checked by the `get_mut` above.
        self.pending_len = tail.len() as u8;
        Ok(())
    }
}

/// The length of the sequence that starts with `lead`, for a lead byte of a valid prefix.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// Feeds `chunks` in order, then finishes: the result a whole message would get.
    fn validate_chunks(chunks: &[&[u8]]) -> Result<(), ProtocolError> {
        let mut validator = Utf8Validator::default();
        for chunk in chunks {
            validator.feed(chunk)?;
        }
        validator.finish()
    }

    /// Checks `input` whole, split at every boundary, and byte at a time against `std`.
    fn assert_matches_std(input: &[u8]) {
        let expected = std::str::from_utf8(input).is_ok();
        assert_eq!(validate_chunks(&[input]).is_ok(), expected, "{input:x?}");
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(
                validate_chunks(&[a, b]).is_ok(),
                expected,
                "{input:x?} at {split}"
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            validate_chunks(&bytes).is_ok(),
            expected,
            "{input:x?} bytewise"
        );
    }

    #[test]
    fn validator_fits_in_eight_bytes() {
        assert!(std::mem::size_of::<Utf8Validator>() <= 8);
    }

    #[test]
    fn known_inputs_match_std_at_every_split() {
        let table: [&[u8]; 16] = [
            b"",
            b"Hello",
            "\u{20ac}uro \u{10348} \u{7ff} \u{ffff} \u{10ffff}".as_bytes(),
            b"\xc0\x80",         // overlong NUL
            b"\xe0\x80\xaf",     // overlong '/'
            b"\xf0\x82\x82\xac", // overlong euro sign
            b"\xed\xa0\x80",     // U+D800, a surrogate
            b"\xed\xbf\xbf",     // U+DFFF, a surrogate
            b"\xf4\x90\x80\x80", // U+110000, above the last code point
            b"\xf5\x80\x80\x80",
            b"\xff",
            b"\x80",
            b"\xe2\x82",       // truncated euro sign
            b"ab\xf0\x9f\x98", // truncated emoji
            b"\xe2\x82\xac\xe2\x82\xac\x80",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5",
        ];
        for input in table {
            assert_matches_std(input);
        }
    }

    #[test]
    fn invalid_byte_fails_before_the_message_ends() {
        let mut validator = Utf8Validator::default();
        validator.feed(b"ok so far ").unwrap();
        assert_eq!(validator.feed(b"\xed\xa0"), Err(ProtocolError::InvalidUtf8));
        let mut validator = Utf8Validator::default();
        validator.feed(b"\xf4").unwrap();
        assert_eq!(validator.feed(b"\x90"), Err(ProtocolError::InvalidUtf8));
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.feed(b"\xc0"), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn code_point_split_across_chunks_is_valid() {
        assert_eq!(
            validate_chunks(&[b"\xf0", b"\x9f", b"\x98", b"\x80"]),
            Ok(())
        );
        assert_eq!(validate_chunks(&[b"a\xe2\x82", b"\xacb"]), Ok(()));
    }

    #[test]
    fn incomplete_code_point_at_the_end_fails_on_finish() {
        let mut validator = Utf8Validator::default();
        validator.feed(b"a\xe2\x82").unwrap();
        assert_eq!(validator.finish(), Err(ProtocolError::InvalidUtf8));
        // `finish` resets, so the validator can be reused for the next message.
        assert_eq!(validator.finish(), Ok(()));
    }

    #[test]
    fn random_inputs_match_std_at_every_split() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let alphabet: [&[u8]; 12] = [
            b"a",
            b"\x7f",
            b"\xc3\xa9",
            b"\xe2\x82\xac",
            b"\xf0\x9f\x98\x80",
            b"\xed\x9f\xbf",
            b"\xee\x80\x80",
            b"\xf4\x8f\xbf\xbf",
            b"\x80",
            b"\xc3",
            b"\xe2\x82",
            b"\xf0\x9f\x98",
        ];
        for _ in 0..2000 {
            let mut input = Vec::new();
            for _ in 0..rng.below(12) {
                if rng.below(4) == 0 {
                    input.push(rng.next() as u8);
                } else {
                    input.extend_from_slice(alphabet[rng.below(alphabet.len())]);
                }
            }
            assert_matches_std(&input);
        }
    }
}
