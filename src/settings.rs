//! Where settings come from: defaults, then a TOML file (`--config`, read only when named), then
//! `RINGCAST_*` environment variables, then flags; each later source wins. One table lists every
//! setting once, with its flag, TOML key, environment variable, unit and what happens when the
//! limit is hit; the CLI, the file schema and the README table are all generated from it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{LimitError, Limits, ServerConfig};
use crate::driver::IoMode;
use crate::pusher::app::{App, Apps};
use crate::server::Placement;

/// A setting that cannot work, named by its TOML key (the flag and the variable derive from it).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid value for {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl From<LimitError> for SettingsError {
    fn from(e: LimitError) -> Self {
        SettingsError::Invalid {
            key: e.key,
            reason: e.reason,
        }
    }
}

/// `--io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Io {
    Auto,
    Uring,
    Epoll,
}

impl From<Io> for IoMode {
    fn from(io: Io) -> IoMode {
        match io {
            Io::Auto => IoMode::Auto,
            Io::Uring => IoMode::Uring,
            Io::Epoll => IoMode::Epoll,
        }
    }
}

macro_rules! limit_settings {
    ($(
        $(#[doc = $doc:literal])*
        $key:ident => $field:ident : $ty:ty, $env:literal, $unit:literal, $default:literal, $on_hit:literal;
    )*) => {
        /// Flags (and their environment variables) for every limit.
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct LimitArgs {
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env)]
                pub $key: Option<$ty>,
            )*
        }

        /// The limits as the TOML file spells them.
        #[derive(Deserialize, Debug, Default, Clone)]
        #[serde(deny_unknown_fields)]
        struct FileLimits {
            $(#[serde(default)] $key: Option<$ty>,)*
        }

        fn apply_limits(limits: &mut Limits, file: &FileLimits, args: &LimitArgs) -> Vec<&'static str> {
            let mut set = Vec::new();
            $(
                if let Some(v) = args.$key.clone().or_else(|| file.$key.clone()) {
                    limits.$field = v;
                    set.push(stringify!($key));
                }
            )*
            set
        }

        /// The README's settings table, generated so it cannot drift from the code.
        pub fn limits_table_markdown() -> String {
            let mut s = String::from(
                "| flag | TOML key | env variable | default | unit | when it is hit |\n|---|---|---|---|---|---|\n",
            );
            $(
                s.push_str(&format!(
                    "| `--{}` | `{}` | `{}` | {} | {} | {} |\n",
                    stringify!($key).replace('_', "-"),
                    stringify!($key),
                    $env,
                    $default,
                    $unit,
                    $on_hit
                ));
            )*
            s
        }
    };
}

limit_settings! {
    /// Connections the whole server holds at once.
    max_connections => connections_max: u32, "RINGCAST_MAX_CONNECTIONS", "connections",
        "open-file limit minus a reserve", "503 before the upgrade (a Pusher `/app/` upgrade: close 4100), then close";
    /// Connections one shard holds at once.
    max_connections_per_shard => connections_per_shard_max: u32, "RINGCAST_MAX_CONNECTIONS_PER_SHARD",
        "connections", "max_connections / shards", "503 before the upgrade (a Pusher `/app/` upgrade: close 4100), then close";
    /// Concurrent connections from one IP address, per shard (0 = off).
    max_connections_per_ip => connections_per_ip_max: u32, "RINGCAST_MAX_CONNECTIONS_PER_IP",
        "connections", "0 (off)", "429 before the upgrade, then close";
    /// New connections per second from one IP address, per shard (0 = off).
    max_handshakes_per_ip_per_s => handshakes_per_ip_per_s: u32, "RINGCAST_MAX_HANDSHAKES_PER_IP_PER_S",
        "connections/s", "0 (off)", "429 before the upgrade, then close";
    /// Largest WebSocket message after reassembly.
    max_message_bytes => message_bytes_max: u64, "RINGCAST_MAX_MESSAGE_BYTES", "bytes",
        "1048576", "close 1009";
    /// Largest WebSocket frame payload.
    max_frame_bytes => frame_bytes_max: u64, "RINGCAST_MAX_FRAME_BYTES", "bytes",
        "1048576", "close 1009";
    /// Most continuation frames in one fragmented message.
    max_message_fragments => message_fragments_max: u32, "RINGCAST_MAX_MESSAGE_FRAGMENTS", "frames",
        "65536", "close 1009";
    /// Largest HTTP request head.
    max_header_bytes => header_bytes_max: usize, "RINGCAST_MAX_HEADER_BYTES", "bytes",
        "8192", "431, then close";
    /// Most header lines in an HTTP request.
    max_headers => header_count_max: usize, "RINGCAST_MAX_HEADERS", "headers",
        "64", "431, then close";
    /// Largest HTTP request body.
    max_body_bytes => body_bytes_max: usize, "RINGCAST_MAX_BODY_BYTES", "bytes",
        "1048576", "413, then close";
    /// Outbound bytes queued for one connection.
    max_outbound_bytes => outbound_bytes_max: usize, "RINGCAST_MAX_OUTBOUND_BYTES", "bytes",
        "1048576", "close 1008 (slow consumer), counted";
    /// Queued outbound plus reassembly bytes, per shard.
    memory_budget_bytes => memory_budget_bytes: u64, "RINGCAST_MEMORY_BUDGET_BYTES", "bytes",
        "268435456", "the connections holding the most are closed first, counted";
    /// Time from accept to a complete first request head.
    handshake_timeout_ms => handshake_timeout_ms: u32, "RINGCAST_HANDSHAKE_TIMEOUT_MS", "ms",
        "10000", "TCP close";
    /// Time a keep-alive HTTP connection may idle between requests.
    http_idle_timeout_ms => http_idle_timeout_ms: u32, "RINGCAST_HTTP_IDLE_TIMEOUT_MS", "ms",
        "30000", "TCP close";
    /// Time to receive a request body after its head.
    http_body_timeout_ms => http_body_timeout_ms: u32, "RINGCAST_HTTP_BODY_TIMEOUT_MS", "ms",
        "10000", "TCP close";
    /// Time to wait for the peer's close frame after sending ours.
    close_timeout_ms => close_timeout_ms: u32, "RINGCAST_CLOSE_TIMEOUT_MS", "ms",
        "5000", "TCP close without the handshake";
    /// Silence after which a WebSocket connection is pinged.
    idle_ping_ms => idle_ping_ms: u32, "RINGCAST_IDLE_PING_MS", "ms",
        "60000", "a ping is sent";
    /// Time a pinged connection has to answer (any traffic counts).
    pong_timeout_ms => pong_timeout_ms: u32, "RINGCAST_PONG_TIMEOUT_MS", "ms",
        "30000", "TCP close, counted";
    /// On SIGTERM/SIGINT: how long to wait for connections to close.
    drain_timeout_ms => drain_timeout_ms: u32, "RINGCAST_DRAIN_TIMEOUT_MS", "ms",
        "10000", "exit 0 with the rest closed";
    /// Receive buffers in each shard's provided-buffer ring (power of two).
    recv_buffer_count => recv_buffer_count: u16, "RINGCAST_RECV_BUFFER_COUNT", "buffers",
        "256", "receives wait for a buffer to return (ENOBUFS, re-armed)";
    /// Size of each receive buffer.
    recv_buffer_bytes => recv_buffer_bytes: u32, "RINGCAST_RECV_BUFFER_BYTES", "bytes",
        "16384", "a read is split over several buffers";
    /// Most buffers gathered into one send.
    send_iovecs_max => send_iovecs_max: usize, "RINGCAST_SEND_IOVECS_MAX", "buffers",
        "1024", "the rest goes in the next send";
    /// Messages each shard-to-shard ring holds.
    mesh_ring_capacity => mesh_ring_capacity: u32, "RINGCAST_MESH_RING_CAPACITY", "messages",
        "8192", "a publish needing it is refused: 503 + Retry-After, or close 1013; counted";
    /// Messages taken from the mesh rings per loop turn.
    mesh_messages_per_turn_max => mesh_messages_per_turn_max: u32,
        "RINGCAST_MESH_MESSAGES_PER_TURN_MAX", "messages", "4096", "the rest wait for the next turn";
    /// Messages each ring between a shard and the hub (the Pusher control plane) holds.
    hub_ring_capacity => hub_ring_capacity: u32, "RINGCAST_HUB_RING_CAPACITY", "messages",
        "8192", "messages wait in the backlog (max_hub_backlog)";
    /// Messages waiting for room in a shard-hub ring, per ring.
    max_hub_backlog => hub_backlog_max: u32, "RINGCAST_MAX_HUB_BACKLOG", "messages", "65536",
        "the message is dropped, counted (hub_dropped) and logged; an API query then times out";
    /// Frames queued to subscribers per loop turn.
    fanout_deliveries_per_turn_max => fanout_deliveries_per_turn_max: u32,
        "RINGCAST_FANOUT_DELIVERIES_PER_TURN_MAX", "deliveries", "4096",
        "the fan-out continues on the next turn";
    /// Completions handled per loop turn.
    completions_per_turn_max => completions_per_turn_max: usize, "RINGCAST_COMPLETIONS_PER_TURN_MAX",
        "completions", "4096", "the rest wait for the next turn";
}

/// `ringcast serve` flags.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (read only when named).
    #[arg(long, env = "RINGCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on (port 0 picks a free port) [default: 127.0.0.1:6001].
    #[arg(long, env = "RINGCAST_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listener for /stats, /ready, /metrics [default: 127.0.0.1:9601].
    #[arg(long, env = "RINGCAST_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Serve the echo endpoint at /echo (each message comes back with its opcode).
    #[arg(long, env = "RINGCAST_ECHO", num_args = 0..=1, default_missing_value = "true")]
    pub echo: Option<bool>,
    /// I/O driver: auto (io_uring, else epoll with a warning), uring (or exit 69), epoll.
    #[arg(long, value_enum, env = "RINGCAST_IO")]
    pub io: Option<Io>,
    /// Shards (threads, each with its own listener and ring) [default: the CPUs this process may
    /// run on].
    #[arg(long, env = "RINGCAST_SHARDS")]
    pub shards: Option<usize>,
    /// Let /topics subscribers publish to the topic's other subscribers.
    #[arg(long, env = "RINGCAST_ALLOW_CLIENT_PUBLISH", num_args = 0..=1, default_missing_value = "true")]
    pub allow_client_publish: Option<bool>,
    /// Bearer token that `POST /topics/{name}` requires (unset: HTTP publishing is refused).
    #[arg(long, env = "RINGCAST_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,
    /// Pin shard i to the i-th CPU of the process's affinity mask.
    #[arg(long, env = "RINGCAST_PIN", num_args = 0..=1, default_missing_value = "true")]
    pub pin: Option<bool>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    echo: Option<bool>,
    io: Option<Io>,
    shards: Option<usize>,
    pin: Option<bool>,
    allow_client_publish: Option<bool>,
    publish_token: Option<String>,
    /// Pusher apps (`[[apps]]` tables); none: the development app.
    #[serde(default)]
    apps: Vec<App>,
    #[serde(flatten)]
    limits: FileLimits,
}

/// Everything `serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerConfig,
    pub placement: Placement,
    pub admin_listen: SocketAddr,
    /// How the connection limit was chosen, for the startup log.
    pub connection_limit_origin: String,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:6001";
/// The port Soketi and Sockudo use for metrics.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9601";

/// Resolves settings: defaults < file < env < flags (clap already merged env under flags).
/// `nofile` is the soft open-file limit, which the default connection limit follows.
pub fn resolve(args: &ServeArgs, nofile: u64) -> Result<Settings, SettingsError> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| SettingsError::ReadFile {
                path: path.clone(),
                source,
            })?;
            toml::from_str::<FileConfig>(&text).map_err(|e| SettingsError::ParseFile {
                path: path.clone(),
                message: e.to_string().trim().replace('\n', " "),
            })?
        }
        None => FileConfig::default(),
    };
    let mut placement = Placement::from_affinity();
    if let Some(n) = args.shards.or(file.shards) {
        if n == 0 || n > 1024 {
            return Err(SettingsError::Invalid {
                key: "shards",
                reason: "must be between 1 and 1024".into(),
            });
        }
        placement.shards = n;
    }
    placement.pin = args.pin.or(file.pin).unwrap_or(false);
    let shards = placement.shards as u32;
    let (mut limits, mut origin) = Limits::for_host(nofile, shards);
    let set = apply_limits(&mut limits, &file.limits, &args.limits);
    let total_set = set.contains(&"max_connections");
    let per_shard_set = set.contains(&"max_connections_per_shard");
    if total_set {
        origin = format!("connection limit {} (configured)", limits.connections_max);
        if !per_shard_set {
            limits = limits.with_per_shard_share(shards);
        }
    }
    if per_shard_set && !total_set {
        limits.connections_max = limits.connections_per_shard_max.saturating_mul(shards);
        origin = format!(
            "connection limit {} = {} per shard x {shards} shards (configured)",
            limits.connections_max, limits.connections_per_shard_max
        );
    }
    limits.validate()?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().unwrap_or_else(|_| unreachable!()));
    let admin_listen = args.admin_listen.or(file.admin_listen).unwrap_or_else(|| {
        DEFAULT_ADMIN_LISTEN
            .parse()
            .unwrap_or_else(|_| unreachable!())
    });
    let dev_app = file.apps.is_empty();
    let apps = if dev_app {
        vec![App::default_dev()]
    } else {
        file.apps
    };
    let apps = Apps::new(apps).map_err(|e| SettingsError::Invalid {
        key: "apps",
        reason: e.to_string(),
    })?;
    if dev_app && !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "NO APPS CONFIGURED: the development app (key app-key, secret app-secret) is \
             reachable beyond loopback; anyone can publish with its public secret. Configure \
             [[apps]] in the config file"
        );
    }
    let server = ServerConfig {
        listen,
        apps: std::sync::Arc::new(apps),
        echo: args.echo.or(file.echo).unwrap_or(false),
        io: args.io.or(file.io).unwrap_or(Io::Auto).into(),
        allow_client_publish: args
            .allow_client_publish
            .or(file.allow_client_publish)
            .unwrap_or(false),
        publish_token: args.publish_token.clone().or(file.publish_token),
        limits,
    };
    if server
        .publish_token
        .as_deref()
        .is_some_and(|t| t.is_empty())
    {
        return Err(SettingsError::Invalid {
            key: "publish_token",
            reason: "must not be empty (leave it unset to refuse HTTP publishing)".into(),
        });
    }
    Ok(Settings {
        server,
        placement,
        admin_listen,
        connection_limit_origin: origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("ringcast-settings-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults_follow_the_open_file_limit() {
        let s = resolve(
            &ServeArgs {
                shards: Some(2),
                ..Default::default()
            },
            20_000,
        )
        .unwrap();
        assert_eq!(s.server.limits.connections_max, 20_000 - 64 - 2 * (8 + 256));
        assert_eq!(s.server.listen.to_string(), DEFAULT_LISTEN);
        assert!(s.connection_limit_origin.contains("open-file limit 20000"));
    }

    #[test]
    fn flags_win_over_the_file() {
        let path = temp_file(
            "prec.toml",
            "max_message_bytes = 10\nclose_timeout_ms = 7\necho = true\n",
        );
        let mut args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        args.limits.max_message_bytes = Some(20);
        let s = resolve(&args, 20_000).unwrap();
        assert_eq!(s.server.limits.message_bytes_max, 20);
        assert_eq!(s.server.limits.close_timeout_ms, 7);
        assert!(s.server.echo);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn unknown_file_key_is_an_error_naming_it() {
        let path = temp_file("unknown.toml", "max_mesage_bytes = 10\n");
        let err = resolve(
            &ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            },
            20_000,
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_mesage_bytes"), "{err}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_value_is_an_error_naming_the_key() {
        let mut args = ServeArgs::default();
        args.limits.close_timeout_ms = Some(0);
        let err = resolve(&args, 20_000).unwrap_err();
        assert!(err.to_string().contains("close_timeout_ms"), "{err}");
    }

    #[test]
    fn configured_total_is_shared_between_shards() {
        let mut args = ServeArgs {
            shards: Some(4),
            ..Default::default()
        };
        args.limits.max_connections = Some(1000);
        let s = resolve(&args, 20_000).unwrap();
        assert_eq!(s.server.limits.connections_per_shard_max, 250);
    }

    #[test]
    fn readme_table_is_the_generated_one() {
        let readme = include_str!("../README.md");
        assert!(
            readme.contains(&limits_table_markdown()),
            "README.md's settings table is stale: run `ringcast settings-table` and paste it"
        );
    }
}
