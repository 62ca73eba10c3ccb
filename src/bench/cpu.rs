//! CPU time of a process from `/proc/PID/stat` (proc(5)): the bench's measure of server cost per
//! message, and of its own load so readers see when the client is the bottleneck. Owns file
//! reads and parsing only; never signals or traces the process it reads.

use std::io;
use std::time::Duration;

/// Clock ticks per second when `/proc/self/auxv` cannot tell: Linux's USER_HZ is 100 on every
/// mainstream architecture.
pub const CLOCK_TICKS_PER_SECOND_DEFAULT: u64 = 100;

/// `AT_CLKTCK` in the ELF auxiliary vector (`<elf.h>`): the kernel's USER_HZ, the unit of the
/// utime and stime fields.
const AT_CLKTCK: u64 = 17;

/// User and system CPU time of a process, in clock ticks (proc(5) fields 14 and 15).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// Field 14, utime.
    pub user: u64,
    /// Field 15, stime.
    pub system: u64,
}

/// Why a `/proc/PID/stat` line did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatError {
    /// No `)` closing the command name (field 2).
    #[error("no closing parenthesis after the command name")]
    MissingCommEnd,
    /// Fewer than 15 fields.
    #[error("fewer than 15 fields")]
    TooFewFields,
    /// utime or stime is not a decimal number.
    #[error("field {field} is not a number: {text:?}")]
    NotANumber {
        /// 1-based field number.
        field: usize,
        /// What was there.
        text: String,
    },
}

/// CPU seconds a process spent over a window, from two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct CpuUsage {
    /// User time, seconds.
    pub user_s: f64,
    /// System time, seconds.
    pub system_s: f64,
}

impl CpuUsage {
    /// User plus system seconds.
    pub fn total_s(&self) -> f64 {
        self.user_s + self.system_s
    }

    /// CPU nanoseconds per unit of work (message or delivery); 0 when there was none.
    pub fn ns_per(&self, units: u64) -> f64 {
        if units == 0 {
            0.0
        } else {
            self.total_s() * 1e9 / units as f64
        }
    }

    /// CPU time as a share of one core over `wall` (1.0 = one core busy all the time).
    pub fn cores(&self, wall: Duration) -> f64 {
        if wall.is_zero() {
            0.0
        } else {
            self.total_s() / wall.as_secs_f64()
        }
    }
}

impl CpuTicks {
    /// The usage between `self` (earlier) and `later`, at `ticks_per_second`.
    pub fn usage_until(&self, later: &Self, ticks_per_second: u64) -> CpuUsage {
        let hz = ticks_per_second.max(1) as f64;
        CpuUsage {
            user_s: later.user.saturating_sub(self.user) as f64 / hz,
            system_s: later.system.saturating_sub(self.system) as f64 / hz,
        }
    }
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) sits in parentheses and may hold
/// spaces and `)`, so fields are counted from the last `)` (proc(5)).
pub fn parse_stat(line: &str) -> Result<CpuTicks, StatError> {
    let comm_end = line.rfind(')').ok_or(StatError::MissingCommEnd)?;
    // After ")": field 3 (state), 4, ... so utime (14) is the 12th and stime (15) the 13th.
    let mut fields = line[comm_end + 1..].split_ascii_whitespace();
    let mut number = |field: usize| -> Result<u64, StatError> {
        let text = fields
            .nth(if field == 14 { 11 } else { 0 })
            .ok_or(StatError::TooFewFields)?;
        text.parse().map_err(|_| StatError::NotANumber {
            field,
            text: text.to_owned(),
        })
    };
    let user = number(14)?;
    let system = number(15)?;
    Ok(CpuTicks { user, system })
}

/// Reads the CPU ticks of process `pid`, or of this process when `None`.
pub fn read_ticks(pid: Option<u32>) -> io::Result<CpuTicks> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let line = std::fs::read_to_string(&path)?;
    parse_stat(&line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))
}

/// The kernel's USER_HZ from `AT_CLKTCK` in `/proc/self/auxv` (what `sysconf(_SC_CLK_TCK)`
/// returns, read without libc), or [`CLOCK_TICKS_PER_SECOND_DEFAULT`].
pub fn clock_ticks_per_second() -> u64 {
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|auxv| auxv_value(&auxv, AT_CLKTCK))
        .filter(|&hz| hz > 0)
        .unwrap_or(CLOCK_TICKS_PER_SECOND_DEFAULT)
}

/// The value for `key` in an auxiliary vector of native-endian (key, value) word pairs.
fn auxv_value(auxv: &[u8], key: u64) -> Option<u64> {
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |bytes: &[u8]| -> u64 {
        let mut b = [0u8; WORD];
        b.copy_from_slice(bytes);
        usize::from_ne_bytes(b) as u64
    };
    auxv.chunks_exact(2 * WORD)
        .map(|pair| (word(&pair[..WORD]), word(&pair[WORD..])))
        .take_while(|&(k, _)| k != 0) // AT_NULL ends the vector
        .find(|&(k, _)| k == key)
        .map(|(_, v)| v)
}

/// A process whose CPU time is sampled at the start and end of a measured window.
#[derive(Debug, Clone, Copy)]
pub struct CpuProbe {
    pid: Option<u32>,
    start: Option<CpuTicks>,
    ticks_per_second: u64,
}

impl CpuProbe {
    /// Samples `pid` (this process when `None`) now. A process that cannot be read gives no
    /// usage at the end rather than an error: the bench still reports everything else.
    pub fn start(pid: Option<u32>, ticks_per_second: u64) -> Self {
        Self {
            pid,
            start: read_ticks(pid).ok(),
            ticks_per_second,
        }
    }

    /// Usage since [`CpuProbe::start`]; `None` if either sample failed.
    pub fn finish(&self) -> Option<CpuUsage> {
        let start = self.start?;
        let end = read_ticks(self.pid).ok()?;
        Some(start.usage_until(&end, self.ticks_per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_fields_14_and_15() {
        let line = "4242 (ringcast) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    731 95 0 0 20 0 3 0 123456 1000000 500 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Ok(CpuTicks {
                user: 731,
                system: 95
            })
        );
    }

    #[test]
    fn command_names_with_spaces_and_parens_do_not_shift_fields() {
        let line = "7 (a) b (c d)) R 1 7 7 0 -1 0 0 0 0 0 12 34 0 0 20 0 1 0 5 6 7";
        assert_eq!(
            parse_stat(line),
            Ok(CpuTicks {
                user: 12,
                system: 34
            })
        );
    }

    #[test]
    fn short_or_broken_lines_name_the_problem() {
        assert_eq!(parse_stat("1 ringcast S"), Err(StatError::MissingCommEnd));
        assert_eq!(parse_stat("1 (x) S 1 2 3"), Err(StatError::TooFewFields));
        assert!(matches!(
            parse_stat("1 (x) S 1 2 3 4 5 6 7 8 9 10 x 2"),
            Err(StatError::NotANumber { field: 14, .. })
        ));
    }

    #[test]
    fn usage_divides_tick_deltas_by_the_clock_rate() {
        let start = CpuTicks {
            user: 100,
            system: 50,
        };
        let end = CpuTicks {
            user: 350,
            system: 60,
        };
        let usage = start.usage_until(&end, 100);
        assert_eq!(usage.user_s, 2.5);
        assert_eq!(usage.system_s, 0.1);
        assert!((usage.ns_per(1_000_000) - 2_600.0).abs() < 1e-6);
        assert_eq!(usage.ns_per(0), 0.0);
        assert!((usage.cores(Duration::from_secs(2)) - 1.3).abs() < 1e-9);
    }

    #[test]
    fn this_process_can_be_read_and_the_clock_rate_is_sane() {
        assert!(read_ticks(None).is_ok());
        assert!(read_ticks(Some(std::process::id())).is_ok());
        let hz = clock_ticks_per_second();
        assert!((1..=10_000).contains(&hz), "{hz}");
        let mut auxv = Vec::new();
        for (k, v) in [(6u64, 4096u64), (AT_CLKTCK, 250), (0, 0), (AT_CLKTCK, 1)] {
            auxv.extend_from_slice(&(k as usize).to_ne_bytes());
            auxv.extend_from_slice(&(v as usize).to_ne_bytes());
        }
        assert_eq!(auxv_value(&auxv, AT_CLKTCK), Some(250));
        assert_eq!(auxv_value(&auxv, 99), None);
    }
}
