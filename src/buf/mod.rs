//! Buffer management shared with the kernel: the provided-buffer ring that multishot receives
//! draw from. Owns the memory the kernel writes into; never interprets its contents.

pub mod out;
pub mod ring;

pub use out::OutBuf;
pub use ring::BufRing;
