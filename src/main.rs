//! The `ringcast` command: parse flags, build the configuration, start the shards.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Args, Parser, Subcommand};
use ringcast::config::{Limits, ServerConfig};
use ringcast::driver::IoMode;
use ringcast::server::{Server, ServerError};

/// sysexits.h: EX_USAGE, a bad flag or configuration value.
const EXIT_USAGE: u8 = 64;
/// sysexits.h: EX_UNAVAILABLE, a required service (io_uring) is missing.
const EXIT_UNAVAILABLE: u8 = 69;
/// sysexits.h: EX_OSERR, the operating system refused (bind failed).
const EXIT_OSERR: u8 = 71;

#[derive(Parser)]
#[command(name = "ringcast", version, about = "A real-time WebSocket server on io_uring")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Io {
    Auto,
    Uring,
    Epoll,
}

#[derive(Args)]
struct ServeArgs {
    /// Address and port to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6001")]
    listen: SocketAddr,
    /// Serve the echo endpoint at /echo (each message comes back with its opcode).
    #[arg(long)]
    echo: bool,
    /// I/O driver: auto (io_uring, else epoll with a warning), uring (or exit 69), epoll.
    #[arg(long, value_enum, default_value_t = Io::Auto)]
    io: Io,
    /// Number of shards (threads, each with its own listener and io_uring).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Largest WebSocket message after reassembly, bytes (over it: close 1009).
    #[arg(long, default_value_t = Limits::default().message_bytes_max)]
    max_message_bytes: u64,
    /// Largest WebSocket frame payload, bytes (over it: close 1009).
    #[arg(long, default_value_t = Limits::default().frame_bytes_max)]
    max_frame_bytes: u64,
    /// Most frames in one fragmented message (over it: close 1009).
    #[arg(long, default_value_t = Limits::default().message_fragments_max)]
    max_message_fragments: u32,
    /// Largest HTTP request head, bytes (over it: 431).
    #[arg(long, default_value_t = Limits::default().header_bytes_max)]
    max_header_bytes: usize,
    /// Most header lines in a request (over it: 431).
    #[arg(long, default_value_t = Limits::default().header_count_max)]
    max_headers: usize,
    /// Largest HTTP request body, bytes (over it: 413).
    #[arg(long, default_value_t = Limits::default().body_bytes_max)]
    max_body_bytes: usize,
    /// Outbound bytes queued per connection (over it: close 1008).
    #[arg(long, default_value_t = Limits::default().outbound_bytes_max)]
    max_outbound_bytes: usize,
    /// Time to receive the first complete request head, ms.
    #[arg(long, default_value_t = Limits::default().handshake_timeout_ms)]
    handshake_timeout_ms: u32,
    /// Time a keep-alive HTTP connection may idle between requests, ms.
    #[arg(long, default_value_t = Limits::default().http_idle_timeout_ms)]
    http_idle_timeout_ms: u32,
    /// Time to receive a request body after its head, ms.
    #[arg(long, default_value_t = Limits::default().http_body_timeout_ms)]
    http_body_timeout_ms: u32,
    /// Time to wait for the peer's close frame after sending ours, ms.
    #[arg(long, default_value_t = Limits::default().close_timeout_ms)]
    close_timeout_ms: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGCAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let limits = Limits {
        message_bytes_max: args.max_message_bytes,
        frame_bytes_max: args.max_frame_bytes,
        message_fragments_max: args.max_message_fragments,
        header_bytes_max: args.max_header_bytes,
        header_count_max: args.max_headers,
        body_bytes_max: args.max_body_bytes,
        outbound_bytes_max: args.max_outbound_bytes,
        handshake_timeout_ms: args.handshake_timeout_ms,
        http_idle_timeout_ms: args.http_idle_timeout_ms,
        http_body_timeout_ms: args.http_body_timeout_ms,
        close_timeout_ms: args.close_timeout_ms,
        ..Limits::default()
    };
    if let Err(e) = limits.validate() {
        eprintln!("ringcast: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    if args.shards == 0 || args.shards > 1024 {
        eprintln!("ringcast: invalid value for shards: must be between 1 and 1024");
        return ExitCode::from(EXIT_USAGE);
    }
    let io = match args.io {
        Io::Auto => IoMode::Auto,
        Io::Uring => IoMode::Uring,
        Io::Epoll => IoMode::Epoll,
    };
    let config = ServerConfig { listen: args.listen, echo: args.echo, io, limits };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("ringcast: cannot install signal handler: {e}");
            return ExitCode::from(EXIT_OSERR);
        }
    }
    let server = match Server::start(config, args.shards, stop) {
        Ok(s) => s,
        Err(e @ ServerError::IoUringUnavailable(_)) => {
            eprintln!("ringcast: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
        Err(e) => {
            eprintln!("ringcast: {e}");
            return ExitCode::from(EXIT_OSERR);
        }
    };
    tracing::info!(
        addr = %server.local_addr,
        driver = server.driver_name,
        shards = args.shards,
        "serving"
    );
    // The one line tests and scripts wait for.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ringcast: listening on {}", server.local_addr);
    let _ = out.flush();
    drop(out);
    match server.wait() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast: {e}");
            ExitCode::FAILURE
        }
    }
}
