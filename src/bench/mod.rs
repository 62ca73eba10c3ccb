//! `ringcast bench`: the client-side load generator (connect, echo and fan-out).
//! Owns client sockets, worker threads and measurements. Never imports the server (`shard`,
//! `driver`): it measures only through the wire, so it can point at any WebSocket server.
//!
//! Layout: [`url`] parses `ws://` URLs, [`frame`] is a client frame codec, [`client`] is one
//! non-blocking connection (connect, upgrade, frames), [`stats`] holds percentile math, and
//! [`connect`] runs `bench connect` on worker threads that each own an epoll instance and their
//! connections. [`pool`] is the worker connection set that [`echo`] and [`fanout`] share;
//! [`payload`] is their message format and exact delivery accounting, [`pusher`] is the Pusher
//! Channels client side of `fanout --protocol pusher`, and [`cpu`] reads process CPU time from
//! /proc.

pub mod client;
pub mod connect;
pub mod cpu;
pub mod echo;
pub mod fanout;
pub mod frame;
pub mod payload;
pub mod pool;
pub mod pusher;
pub mod stats;
pub mod url;

#[cfg(test)]
mod test_server;

pub use connect::{ConnectArgs, ConnectReport, FailureCounts, run_connect};
pub use echo::{EchoArgs, EchoReport, run_echo};
pub use fanout::{FanoutArgs, FanoutReport, Protocol, Publish, PusherCounts, run_fanout};

/// Why a bench run could not start or finish. Per-connection failures are not errors: they are
/// counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// `--url` did not parse or resolve.
    #[error("bad --url: {0}")]
    Url(#[from] url::UrlError),
    /// The run would need more file descriptors than RLIMIT_NOFILE allows.
    #[error(
        "{connections} connections need {needed} open files, but this process's open-file limit \
         (RLIMIT_NOFILE soft limit) is {soft_limit} (hard limit {}): raise it with `ulimit -n \
         {needed}`, or use fewer connections per process and run several processes",
        limit_text(*hard_limit)
    )]
    OpenFileLimit {
        /// Connections asked for.
        connections: u32,
        /// Connections plus headroom for the epoll instances, stdio and the like.
        needed: u64,
        /// Soft RLIMIT_NOFILE.
        soft_limit: u64,
        /// Hard RLIMIT_NOFILE (`None`: unlimited).
        hard_limit: Option<u64>,
    },
    /// A flag value that cannot work.
    #[error("invalid --{name}: {reason}")]
    InvalidArgument {
        /// Flag name without dashes.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// epoll_create1 failed.
    #[error("cannot create an epoll instance: {0}")]
    Epoll(std::io::Error),
    /// A worker thread could not be started.
    #[error("cannot start a worker thread: {0}")]
    Spawn(std::io::Error),
    /// A worker thread panicked (a bug: see its message on stderr).
    #[error("a worker thread panicked")]
    WorkerPanicked,
}

impl BenchError {
    /// The error is the caller's (a bad flag or limit), not the system's: exit status 64.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Url(_) | Self::InvalidArgument { .. } | Self::OpenFileLimit { .. }
        )
    }
}

fn limit_text(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string())
}
