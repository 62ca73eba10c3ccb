//! The bench message payload and delivery accounting. A payload is ASCII text: a 20-digit
//! sequence number, a 20-digit send timestamp (nanoseconds since a process-wide monotonic epoch),
//! then `x` padding to the requested size. Publisher and subscribers share the process, so the
//! timestamps compare directly. Owns encoding, parsing and per-subscriber seen-sets; never
//! samples: every delivery is counted.

use std::sync::OnceLock;
use std::time::Instant;

/// Digits of the sequence number.
pub const SEQ_DIGITS: usize = 20;
/// Digits of the send timestamp.
pub const TS_DIGITS: usize = 20;
/// Smallest payload: the two numbers, no padding.
pub const PAYLOAD_BYTES_MIN: usize = SEQ_DIGITS + TS_DIGITS;

/// Nanoseconds since this process's bench epoch (CLOCK_MONOTONIC through [`Instant`]).
pub fn now_ns() -> u64 {
    ns_since_epoch(Instant::now())
}

/// `at` as nanoseconds since the bench epoch (0 for instants before it).
pub fn ns_since_epoch(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    at.saturating_duration_since(epoch).as_nanos() as u64
}

/// Why a payload could not be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Shorter than [`PAYLOAD_BYTES_MIN`].
    #[error("payload of {0} bytes is shorter than {PAYLOAD_BYTES_MIN}")]
    TooShort(usize),
    /// A non-digit where a number should be.
    #[error("payload does not start with two 20-digit numbers")]
    NotDigits,
}

/// Writes the payload for (`seq`, `send_ts_ns`) into `out` (cleared first), padded with `x` to
/// `bytes` bytes.
///
/// # Panics
/// If `bytes < PAYLOAD_BYTES_MIN` (callers validate `--bytes` first).
pub fn encode(seq: u64, send_ts_ns: u64, bytes: usize, out: &mut Vec<u8>) {
    assert!(
        bytes >= PAYLOAD_BYTES_MIN,
        "payload {bytes} bytes too small"
    );
    out.clear();
    write_digits(seq, out);
    write_digits(send_ts_ns, out);
    out.resize(bytes, b'x');
}

/// Reads (`seq`, `send_ts_ns`) from the start of a payload.
pub fn parse(payload: &[u8]) -> Result<(u64, u64), PayloadError> {
    if payload.len() < PAYLOAD_BYTES_MIN {
        return Err(PayloadError::TooShort(payload.len()));
    }
    let seq = read_digits(&payload[..SEQ_DIGITS])?;
    let ts = read_digits(&payload[SEQ_DIGITS..PAYLOAD_BYTES_MIN])?;
    Ok((seq, ts))
}

fn write_digits(mut value: u64, out: &mut Vec<u8>) {
    // u64::MAX has 20 digits, so 20 always suffice.
    let mut digits = [b'0'; 20];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out.extend_from_slice(&digits);
}

fn read_digits(text: &[u8]) -> Result<u64, PayloadError> {
    let mut value: u64 = 0;
    for &c in text {
        if !c.is_ascii_digit() {
            return Err(PayloadError::NotDigits);
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
            .ok_or(PayloadError::NotDigits)?;
    }
    Ok(value)
}

/// What one subscriber has seen of messages `0..expected`: a bitset, so loss and duplicates are
/// exact. Memory is `expected / 8` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqTracker {
    seen: Vec<u64>,
    expected: u64,
    /// Distinct sequence numbers in `0..expected` received.
    pub unique: u64,
    /// Receipts of a sequence number already seen.
    pub duplicates: u64,
    /// First receipts of a sequence number lower than one seen before.
    pub out_of_order: u64,
    /// Payloads that did not parse or carried a sequence number outside `0..expected`.
    pub malformed: u64,
    /// Highest sequence number seen so far, plus one (0: none yet).
    next_in_order: u64,
}

/// Where a received message stands, from [`SeqTracker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// First time this sequence number was seen.
    New,
    /// Seen before.
    Duplicate,
    /// Not a valid bench sequence number for this run.
    Malformed,
}

impl SeqTracker {
    /// A tracker for messages `0..expected`.
    pub fn new(expected: u64) -> Self {
        Self {
            seen: vec![0; expected.div_ceil(64) as usize],
            expected,
            unique: 0,
            duplicates: 0,
            out_of_order: 0,
            malformed: 0,
            next_in_order: 0,
        }
    }

    /// Counts the receipt of `seq`.
    pub fn record(&mut self, seq: u64) -> Receipt {
        if seq >= self.expected {
            self.malformed += 1;
            return Receipt::Malformed;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return Receipt::Duplicate;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        if seq < self.next_in_order {
            self.out_of_order += 1;
        } else {
            self.next_in_order = seq + 1;
        }
        Receipt::New
    }

    /// Counts a payload that did not parse.
    pub fn record_malformed(&mut self) {
        self.malformed += 1;
    }

    /// Every message has been seen.
    pub fn is_complete(&self) -> bool {
        self.unique == self.expected
    }

    /// Messages not (yet) seen.
    pub fn lost(&self) -> u64 {
        self.expected - self.unique
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_two_zero_padded_numbers_then_x() {
        let mut out = Vec::new();
        encode(42, 1_234_567, 64, &mut out);
        assert_eq!(out.len(), 64);
        assert_eq!(
            &out[..40],
            b"0000000000000000004200000000000001234567".as_slice()
        );
        assert!(out[40..].iter().all(|&b| b == b'x'));
        assert_eq!(parse(&out), Ok((42, 1_234_567)));
        encode(u64::MAX, 0, 40, &mut out);
        assert_eq!(out.len(), 40);
        assert_eq!(parse(&out), Ok((u64::MAX, 0)));
    }

    #[test]
    fn short_or_garbled_payloads_are_rejected() {
        assert_eq!(parse(b"123"), Err(PayloadError::TooShort(3)));
        let mut out = Vec::new();
        encode(7, 9, 48, &mut out);
        out[5] = b'-';
        assert_eq!(parse(&out), Err(PayloadError::NotDigits));
        // 20 nines overflow u64.
        let nines = [b'9'; 40];
        assert_eq!(parse(&nines), Err(PayloadError::NotDigits));
    }

    #[test]
    #[should_panic(expected = "too small")]
    fn payload_under_40_bytes_is_a_bug() {
        encode(1, 1, 39, &mut Vec::new());
    }

    #[test]
    fn tracker_counts_loss_duplicates_and_out_of_order_exactly() {
        let mut t = SeqTracker::new(130);
        for seq in [0, 1, 2, 5, 3, 3, 129, 64, 64, 200] {
            t.record(seq);
        }
        t.record_malformed();
        assert_eq!(t.unique, 7); // 0 1 2 5 3 129 64
        assert_eq!(t.duplicates, 2); // 3 and 64 again
        assert_eq!(t.out_of_order, 2); // 3 after 5, 64 after 129
        assert_eq!(t.malformed, 2); // 200 and the unparsed one
        assert_eq!(t.lost(), 123);
        assert!(!t.is_complete());
    }

    #[test]
    fn tracker_completes_when_every_sequence_number_arrived_once() {
        let mut t = SeqTracker::new(100);
        for seq in (0..100).rev() {
            assert_eq!(t.record(seq), Receipt::New);
        }
        assert!(t.is_complete());
        assert_eq!(t.lost(), 0);
        assert_eq!(t.out_of_order, 99);
        assert_eq!(t.record(0), Receipt::Duplicate);
        assert_eq!(t.record(100), Receipt::Malformed);
    }

    #[test]
    fn timestamps_are_monotonic_nanoseconds() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }
}
