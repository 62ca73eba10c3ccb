//! The `ringcast` command: parse settings, start the shards and the admin listener, wait.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};
use ringcast::admin::Admin;
use ringcast::ops::doctor;
use ringcast::server::{Server, ServerError};
use ringcast::settings::{self, ServeArgs};
use ringcast::shard::Shared;

/// sysexits.h: EX_USAGE, a bad flag or configuration value.
const EXIT_USAGE: u8 = 64;
/// sysexits.h: EX_UNAVAILABLE, a required service (io_uring) is missing.
const EXIT_UNAVAILABLE: u8 = 69;
/// sysexits.h: EX_OSERR, the operating system refused (bind failed).
const EXIT_OSERR: u8 = 71;

#[derive(Parser)]
#[command(
    name = "ringcast",
    version,
    about = "A real-time WebSocket server on io_uring"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Check this host against tuning/README.md for a number of connections.
    Doctor(DoctorArgs),
    /// Client-side load generator (run it against a server in another process).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print the settings table (markdown) that the README carries.
    #[command(hide = true)]
    SettingsTable,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Open N WebSocket connections, report handshakes/s and latency, hold them, close them.
    Connect(ringcast::bench::ConnectArgs),
    /// C connections each keeping W messages in flight to an echo endpoint for T seconds.
    Echo(ringcast::bench::EchoArgs),
    /// N subscribers on a topic, one publisher (WebSocket or HTTP): loss, latency, CPU/delivery.
    Fanout(ringcast::bench::FanoutArgs),
}

#[derive(clap::Args)]
struct DoctorArgs {
    /// Connections to plan for [default: the configured connection limit].
    #[arg(long)]
    connections: Option<u64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Read sysctls and /proc files from this directory instead of /proc.
    #[arg(long, default_value = "/proc")]
    proc_root: std::path::PathBuf,
    /// The server's settings (the same flags, variables and file as `serve`).
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGCAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Doctor(args) => doctor(&args),
        Command::Bench(BenchCommand::Connect(args)) => bench_connect(&args),
        Command::Bench(BenchCommand::Echo(args)) => bench_echo(&args),
        Command::Bench(BenchCommand::Fanout(args)) => bench_fanout(&args),
        Command::SettingsTable => {
            print!("{}", settings::limits_table_markdown());
            ExitCode::SUCCESS
        }
    }
}

fn nofile_soft() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20)
}

fn serve(args: &ServeArgs) -> ExitCode {
    let settings = match settings::resolve(args, nofile_soft()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    tracing::info!("{}", settings.connection_limit_origin);
    // The host checks of `ringcast doctor`, for the configured limit: a warning per problem,
    // never a refusal to start.
    let report = host_report(
        &settings,
        settings.server.limits.connections_max.into(),
        "/proc".as_ref(),
    );
    for check in report.problems() {
        tracing::warn!("doctor: {check}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while draining exits at once (status 1).
        let installed =
            signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
                .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)));
        if let Err(e) = installed {
            eprintln!("ringcast: cannot install signal handler: {e}");
            return ExitCode::from(EXIT_OSERR);
        }
    }
    let shared = Arc::new(Shared::new(stop, settings.placement.shards));
    let admin = match Admin::start(settings.admin_listen, Arc::clone(&shared)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "ringcast: cannot listen on {} (admin): {e}",
                settings.admin_listen
            );
            return ExitCode::from(EXIT_OSERR);
        }
    };
    let server = match Server::start(settings.server.clone(), &settings.placement, shared) {
        Ok(s) => s,
        Err(e @ ServerError::IoUringUnavailable(_)) => {
            eprintln!("ringcast: {e} (use --io auto or --io epoll to run on epoll)");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
        Err(e) => {
            eprintln!("ringcast: {e}");
            return ExitCode::from(EXIT_OSERR);
        }
    };
    let limits = &settings.server.limits;
    tracing::info!(
        addr = %server.local_addr,
        admin = %admin.local_addr,
        driver = server.driver_name,
        shards = settings.placement.shards,
        max_connections = limits.connections_max,
        max_connections_per_shard = limits.connections_per_shard_max,
        "serving"
    );
    // The lines tests and scripts wait for.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ringcast: admin on {}", admin.local_addr);
    let _ = writeln!(out, "ringcast: listening on {}", server.local_addr);
    let _ = out.flush();
    drop(out);
    match server.wait() {
        Ok(()) => {
            tracing::info!("drained, exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringcast: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the host checks for `connections` under these settings.
fn host_report(
    settings: &settings::Settings,
    connections: u64,
    proc_root: &std::path::Path,
) -> doctor::Report {
    let io_uring = ringcast::driver::probe_uring().map_err(|e| e.0);
    let facts = doctor::HostFacts::read(proc_root, io_uring);
    let mut req = doctor::Requirements::new(connections);
    req.io_uring_required = settings.server.io == ringcast::driver::IoMode::Uring;
    req.shards = settings.placement.shards as u32;
    doctor::evaluate(&facts, &req)
}

fn doctor(args: &DoctorArgs) -> ExitCode {
    let settings = match settings::resolve(&args.serve, nofile_soft()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.connections == Some(0) {
        eprintln!("ringcast: invalid value for connections: must be at least 1");
        return ExitCode::from(EXIT_USAGE);
    }
    let n = args
        .connections
        .unwrap_or_else(|| settings.server.limits.connections_max.into());
    let report = host_report(&settings, n, &args.proc_root);
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    ExitCode::from(report.exit_code() as u8)
}

fn bench_connect(args: &ringcast::bench::ConnectArgs) -> ExitCode {
    use ringcast::bench::BenchError;
    match ringcast::bench::run_connect(args) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                report.print_text();
            }
            // Any failed connection makes the run fail, so scripts and CI notice.
            if report.failed.total() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("ringcast bench connect: {e}");
            let usage = matches!(
                e,
                BenchError::Url(_)
                    | BenchError::InvalidArgument { .. }
                    | BenchError::OpenFileLimit { .. }
            );
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_OSERR })
        }
    }
}

fn bench_echo(args: &ringcast::bench::EchoArgs) -> ExitCode {
    match ringcast::bench::run_echo(args) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            // A connection that failed or broke makes the run fail, so scripts notice.
            let clean = report.connect_failed == 0 && report.dropped == 0;
            ExitCode::from(if clean { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("ringcast bench echo: {e}");
            ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_OSERR })
        }
    }
}

fn bench_fanout(args: &ringcast::bench::FanoutArgs) -> ExitCode {
    match ringcast::bench::run_fanout(args) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            // Loss is a measurement; a subscriber or publisher that failed makes the run fail.
            ExitCode::from(if report.is_complete() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("ringcast bench fanout: {e}");
            ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_OSERR })
        }
    }
}
