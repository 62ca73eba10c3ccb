//! `ringcast doctor`: checks a Linux host against `tuning/README.md` for N connections.
//!
//! Owns three steps, kept apart so that each can be tested alone:
//! 1. [`HostFacts::read`] reads the host: sysctls and `/proc` files under a proc root (normally
//!    `/proc`; tests and `--proc-root` pass a fake one); rlimits, cores and the kernel release
//!    from files under that root when present, else from the live process (rustix, std).
//! 2. [`evaluate`] judges the facts against [`Requirements`] and returns a [`Report`]: one
//!    [`Check`] per setting, and the memory [`Budget`]. It is pure: no I/O.
//! 3. [`Report::to_table`] / [`Report::to_json`] render it; [`Report::exit_code`] maps it to 0, 1
//!    or 2.
//!
//! It must never change the host, parse the command line or the config, or probe io_uring itself:
//! the driver owns the probe and passes its verdict in.
//!
//! # Call contract
//!
//! `ringcast doctor [--connections N] [--config FILE] [--json] [--proc-root DIR]`:
//!
//! ```no_run
//! use std::path::Path;
//! use ringcast::ops::doctor::{HostFacts, Requirements, evaluate};
//!
//! let probe: Result<(), String> = Ok(()); // the driver's io_uring probe: Err(reason) if unusable
//! let facts = HostFacts::read(Path::new("/proc"), probe);
//! let mut req = Requirements::new(1_000_000); // N: --connections, else the configured limit
//! req.io_uring_required = false; // true when the config demands io_uring (no epoll fallback)
//! req.shards = 2; // configured shard count; 0 means one per core
//! let report = evaluate(&facts, &req);
//! print!("{}", report.to_table()); // or report.to_json() for --json
//! std::process::exit(report.exit_code()); // 0 OK, 1 WARN, 2 FAIL; usage errors use EXIT_USAGE
//! ```
//!
//! `ringcast serve` runs the same evaluation for its configured connection limit and logs one
//! warning per [`Report::problems`] item (`tracing::warn!("doctor: {check}")`); it never refuses
//! to start because of a check.
//!
//! Every threshold below is a `pub const` or comes from [`Scale::thresholds`], and
//! `tuning/README.md` quotes the same numbers. Change both together.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;

use rustix::process::Resource;

/// Exit code for usage errors, as everywhere in ringcast (BSD `EX_USAGE`). The CLI uses it; the
/// checks never produce it.
pub const EXIT_USAGE: i32 = 64;

/// Kernel memory per idle established TCP socket, in bytes.
///
/// Measured, not guessed: `tuning/measure-kernel-socket-cost.py 8000` on Linux 6.18 (x86_64, 4 KiB
/// pages, 2026-11-22) gave 3,745 to 4,042 bytes of slab per socket (`Slab:` in /proc/meminfo
/// before and after; per cache: TCP 2,368, sock_inode_cache 832, dentry 192, filp 192, LSM and
/// small kmallocs ~70). Rounded up to 4 KiB. Idle sockets hold no buffer pages (sockstat's TCP
/// `mem` did not move); queued data is extra and bounded by `net.ipv4.tcp_mem`.
pub const KERNEL_BYTES_PER_SOCKET: u64 = 4096;

/// ringcast's own memory per idle connection, in bytes: the larger of the figures measured with
/// `benches/idle-memory.sh` at 19,000 connections (118 B on io_uring, 175 B on epoll), rounded
/// up (see `tuning/README.md`, "Memory arithmetic").
pub const USER_BYTES_PER_CONNECTION_DEFAULT: u64 = 192;

/// File descriptors kept free beyond the connections: listeners (one per shard with
/// SO_REUSEPORT), rings, eventfds, timers, logs, Redis and HTTP API sockets.
pub const FD_HEADROOM_FIXED: u64 = 1024;

/// Extra descriptors as a fraction of N (N / this): during a reconnect storm ringcast accepts a
/// socket before it can refuse it with a close frame, so it briefly holds more than N.
pub const FD_HEADROOM_DIVISOR: u64 = 10;

/// The smallest open-file limit the fix lines recommend, whatever N is.
pub const NOFILE_RECOMMENDED_MIN: u64 = 65_536;

/// Locked memory one shard's io_uring needs on kernels before 5.12, in bytes: SQ and CQ rings
/// for 4,096 entries (~400 KiB) plus registered buffers, rounded up. From 5.12 on the kernel
/// charges rings to the memory cgroup instead of RLIMIT_MEMLOCK.
pub const URING_MEMLOCK_BYTES_PER_SHARD: u64 = 1 << 20;

/// The first kernel that charges io_uring's rings to the memory cgroup instead of RLIMIT_MEMLOCK.
/// (Registered fixed buffers still count against RLIMIT_MEMLOCK on every kernel; ringcast's
/// provided-buffer rings are not registered buffers.)
pub const URING_MEMCG_KERNEL: (u32, u32) = (5, 12);

/// The memory budget may use this percentage of MemAvailable before the check warns: the rest is
/// for send queues, kernel buffers of busy sockets, and bursts.
pub const MEMORY_WARN_PERCENT: u64 = 75;

/// `net.ipv4.tcp_mem` pages that one socket is charged while it holds any queued data: the
/// kernel charges socket memory in whole pages, so a fan-out message that sits in every send
/// queue at once costs at least one page per socket.
pub const TCP_MEM_PAGES_PER_ACTIVE_SOCKET: u64 = 1;

/// Fewer ephemeral ports than this is "tiny": a load generator or proxy on this host could not
/// open many connections to one destination.
pub const PORT_RANGE_SPAN_MIN: u64 = 1024;

/// Connection scale: thresholds for the settings that cost performance, not correctness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Up to 10,000 connections.
    Small,
    /// Up to 100,000 connections.
    Medium,
    /// More than 100,000 connections: sized for 1,000,000.
    Large,
}

/// Per-scale minimums (maximum for buffer defaults). `tuning/README.md` has the same table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// `net.core.somaxconn` minimum: caps every listen backlog (one listener per shard).
    pub somaxconn_min: u64,
    /// `net.ipv4.tcp_max_syn_backlog` minimum: half-open connections during a reconnect storm.
    pub tcp_max_syn_backlog_min: u64,
    /// `net.core.netdev_max_backlog` minimum: packets queued per CPU before the stack drops them.
    pub netdev_max_backlog_min: u64,
    /// Largest `tcp_rmem`/`tcp_wmem` default (middle value) that keeps N sockets cheap, in bytes.
    pub socket_buffer_default_max: u64,
}

impl Scale {
    /// The scale N falls in.
    pub fn for_connections(connections: u64) -> Scale {
        match connections {
            0..=10_000 => Scale::Small,
            10_001..=100_000 => Scale::Medium,
            _ => Scale::Large,
        }
    }

    /// The thresholds for this scale.
    pub fn thresholds(self) -> Thresholds {
        match self {
            Scale::Small => Thresholds {
                somaxconn_min: 1024,
                tcp_max_syn_backlog_min: 1024,
                netdev_max_backlog_min: 1000,
                socket_buffer_default_max: 131_072,
            },
            Scale::Medium => Thresholds {
                somaxconn_min: 4096,
                tcp_max_syn_backlog_min: 8192,
                netdev_max_backlog_min: 4096,
                socket_buffer_default_max: 32_768,
            },
            Scale::Large => Thresholds {
                somaxconn_min: 65_535,
                tcp_max_syn_backlog_min: 65_535,
                netdev_max_backlog_min: 16_384,
                socket_buffer_default_max: 16_384,
            },
        }
    }
}

/// One rlimit value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitValue {
    Finite(u64),
    Unlimited,
}

impl LimitValue {
    /// Whether the limit allows at least `n`.
    pub fn allows(self, n: u64) -> bool {
        match self {
            LimitValue::Finite(v) => v >= n,
            LimitValue::Unlimited => true,
        }
    }
}

impl fmt::Display for LimitValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitValue::Finite(v) => write!(f, "{v}"),
            LimitValue::Unlimited => f.write_str("unlimited"),
        }
    }
}

/// Soft and hard values of one rlimit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    pub soft: LimitValue,
    pub hard: LimitValue,
}

/// Everything doctor reads from the host. `None` means "could not read" unless the field says
/// otherwise; the checks report an unreadable value as WARN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// `sys/kernel/osrelease`, else `uname`'s release, e.g. "6.8.0-45-generic".
    pub kernel_release: Option<String>,
    /// CPUs this process may run on (`Cpus_allowed_list` in `self/status`, else
    /// `std::thread::available_parallelism`, else 1).
    pub cores: u32,
    /// Page size in bytes (the unit of `tcp_mem`): `KernelPageSize` in `self/smaps`, else 4096.
    pub page_bytes: u64,
    /// `MemTotal` from `meminfo`, in bytes.
    pub mem_total_bytes: Option<u64>,
    /// `MemAvailable` from `meminfo`, in bytes (absent before Linux 3.14).
    pub mem_available_bytes: Option<u64>,
    /// RLIMIT_NOFILE: "Max open files" in `self/limits`, else this process's `getrlimit`.
    pub nofile: Option<Rlimit>,
    /// RLIMIT_MEMLOCK in bytes: "Max locked memory" in `self/limits`, else `getrlimit`.
    pub memlock: Option<Rlimit>,
    /// `fs.nr_open`: the ceiling for any process's RLIMIT_NOFILE.
    pub fs_nr_open: Option<u64>,
    /// `fs.file-max`: open files system-wide.
    pub fs_file_max: Option<u64>,
    /// First field of `fs.file-nr`: files open system-wide right now.
    pub fs_files_open: Option<u64>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    pub netdev_max_backlog: Option<u64>,
    /// `net.ipv4.tcp_mem`: low, pressure, high, in pages.
    pub tcp_mem_pages: Option<[u64; 3]>,
    /// `net.ipv4.tcp_rmem`: min, default, max, in bytes.
    pub tcp_rmem_bytes: Option<[u64; 3]>,
    /// `net.ipv4.tcp_wmem`: min, default, max, in bytes.
    pub tcp_wmem_bytes: Option<[u64; 3]>,
    /// `net.ipv4.ip_local_port_range`: first and last ephemeral port.
    pub ip_local_port_range: Option<[u64; 2]>,
    /// `kernel.io_uring_disabled`; `None` when absent (kernels before 6.6 have no such switch).
    pub io_uring_disabled: Option<u64>,
    /// `net.netfilter.nf_conntrack_max`; `None` when nf_conntrack is not loaded.
    pub conntrack_max: Option<u64>,
    /// `TCP: inuse` from `net/sockstat`.
    pub tcp_sockets_in_use: Option<u64>,
    /// `TCP: mem` from `net/sockstat`, in pages.
    pub tcp_mem_in_use_pages: Option<u64>,
    /// The driver's io_uring probe: `Err(reason)` when rings cannot be used.
    pub io_uring: Result<(), String>,
}

impl HostFacts {
    /// Reads the host under `proc_root` (normally `/proc`). Never fails: a file that cannot be read
    /// leaves its field `None`, and the check that needs it warns.
    ///
    /// Files read, relative to `proc_root`: `sys/<key with dots as slashes>` for each sysctl,
    /// `meminfo`, `net/sockstat`, and the optional overrides `self/limits` (rlimits, same format as
    /// the real file), `self/status` (`Cpus_allowed_list`), `self/smaps` (`KernelPageSize`) and
    /// `sys/kernel/osrelease`. Without an override the value comes from the live process:
    /// `getrlimit`, `std::thread::available_parallelism`, 4096, `uname`. On the real `/proc` both
    /// sources agree. `io_uring` is the driver's probe result, passed through.
    pub fn read(proc_root: &Path, io_uring: Result<(), String>) -> HostFacts {
        let sys = |key: &str| proc_root.join("sys").join(key.replace('.', "/"));
        let limits = fs::read_to_string(proc_root.join("self/limits")).ok();
        let meminfo = fs::read_to_string(proc_root.join("meminfo")).ok();
        let sockstat = fs::read_to_string(proc_root.join("net/sockstat")).ok();
        let conntrack_max = read_u64(&proc_root.join("sys/net/netfilter/nf_conntrack_max"))
            .or_else(|| read_u64(&proc_root.join("sys/net/nf_conntrack_max")));
        HostFacts {
            kernel_release: fs::read_to_string(sys("kernel.osrelease"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .or_else(live_kernel_release),
            cores: read_cores(proc_root),
            page_bytes: read_page_bytes(proc_root).unwrap_or(4096),
            mem_total_bytes: meminfo
                .as_deref()
                .and_then(|m| meminfo_bytes(m, "MemTotal")),
            mem_available_bytes: meminfo
                .as_deref()
                .and_then(|m| meminfo_bytes(m, "MemAvailable")),
            nofile: limits
                .as_deref()
                .and_then(|l| parse_limit(l, "Max open files"))
                .or_else(|| Some(live_rlimit(Resource::Nofile))),
            memlock: limits
                .as_deref()
                .and_then(|l| parse_limit(l, "Max locked memory"))
                .or_else(|| Some(live_rlimit(Resource::Memlock))),
            fs_nr_open: read_u64(&sys("fs.nr_open")),
            fs_file_max: read_u64(&sys("fs.file-max")),
            fs_files_open: read_fields::<3>(&sys("fs.file-nr")).map(|f| f[0]),
            somaxconn: read_u64(&sys("net.core.somaxconn")),
            tcp_max_syn_backlog: read_u64(&sys("net.ipv4.tcp_max_syn_backlog")),
            netdev_max_backlog: read_u64(&sys("net.core.netdev_max_backlog")),
            tcp_mem_pages: read_fields::<3>(&sys("net.ipv4.tcp_mem")),
            tcp_rmem_bytes: read_fields::<3>(&sys("net.ipv4.tcp_rmem")),
            tcp_wmem_bytes: read_fields::<3>(&sys("net.ipv4.tcp_wmem")),
            ip_local_port_range: read_fields::<2>(&sys("net.ipv4.ip_local_port_range")),
            io_uring_disabled: read_u64(&sys("kernel.io_uring_disabled")),
            conntrack_max,
            tcp_sockets_in_use: sockstat.as_deref().and_then(|s| sockstat_tcp(s, "inuse")),
            tcp_mem_in_use_pages: sockstat.as_deref().and_then(|s| sockstat_tcp(s, "mem")),
            io_uring,
        }
    }
}

/// What the configuration asks of the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirements {
    /// N: connections to hold at once (`--connections`, else the configured limit).
    pub connections: u64,
    /// The config demands io_uring: without it ringcast cannot run, so its absence is FAIL.
    /// `false` means "auto": ringcast falls back to epoll, so its absence is WARN.
    pub io_uring_required: bool,
    /// ringcast's user-space bytes per connection (default
    /// [`USER_BYTES_PER_CONNECTION_DEFAULT`]).
    pub user_bytes_per_connection: u64,
    /// Configured shards (threads); 0 means one per core.
    pub shards: u32,
}

impl Requirements {
    /// Requirements for `connections` with defaults: io_uring auto, the default per-connection
    /// cost, one shard per core.
    pub fn new(connections: u64) -> Requirements {
        Requirements {
            connections,
            io_uring_required: false,
            user_bytes_per_connection: USER_BYTES_PER_CONNECTION_DEFAULT,
            shards: 0,
        }
    }

    /// File descriptors N needs: N + N / [`FD_HEADROOM_DIVISOR`] + [`FD_HEADROOM_FIXED`].
    pub fn fds_needed(&self) -> u64 {
        self.connections
            .saturating_add(self.connections / FD_HEADROOM_DIVISOR)
            .saturating_add(FD_HEADROOM_FIXED)
    }

    /// The open-file limit the fix lines recommend: [`Self::fds_needed`] rounded up to a power
    /// of two, at least [`NOFILE_RECOMMENDED_MIN`] (1M connections: 2,097,152).
    pub fn nofile_recommended(&self) -> u64 {
        self.fds_needed()
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .max(NOFILE_RECOMMENDED_MIN)
    }
}

/// Verdict of one check, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Fine for N.
    Ok,
    /// Costs performance or resilience at N; ringcast still runs.
    Warn,
    /// Makes N impossible.
    Fail,
}

impl Status {
    /// "OK", "WARN" or "FAIL".
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }

    /// The process exit code for this status: 0, 1 or 2.
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Stable name: the sysctl key, or `RLIMIT_NOFILE soft`, `memory`, `io_uring`, ...
    pub name: &'static str,
    /// What the host has now.
    pub current: String,
    /// What N needs.
    pub needed: String,
    pub status: Status,
    /// The exact line that fixes it; empty when the status is OK.
    pub fix: String,
}

impl fmt::Display for Check {
    /// One line, for `serve`'s startup warnings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: current {}, needed {}",
            self.status, self.name, self.current, self.needed
        )?;
        if !self.fix.is_empty() {
            write!(f, "; fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// Memory for N connections: ringcast's user space plus the kernel's sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub connections: u64,
    pub user_bytes_per_connection: u64,
    /// connections x user_bytes_per_connection.
    pub user_bytes: u64,
    /// [`KERNEL_BYTES_PER_SOCKET`].
    pub kernel_bytes_per_socket: u64,
    /// connections x kernel_bytes_per_socket.
    pub kernel_bytes: u64,
    /// user_bytes + kernel_bytes.
    pub total_bytes: u64,
    pub mem_available_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
}

/// The result of [`evaluate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
    pub budget: Budget,
}

/// Judges `facts` against `req`. Pure: no I/O, same input, same report.
pub fn evaluate(facts: &HostFacts, req: &Requirements) -> Report {
    let budget = budget(facts, req);
    let checks = vec![
        check_nofile_soft(facts, req),
        check_nofile_hard(facts, req),
        check_nr_open(facts, req),
        check_file_max(facts, req),
        check_memory(&budget),
        check_io_uring(facts, req),
        check_io_uring_disabled(facts, req),
        check_memlock(facts, req),
        check_cores(facts, req),
        check_somaxconn(facts, req),
        check_syn_backlog(facts, req),
        check_netdev_backlog(facts, req),
        check_tcp_mem(facts, req),
        check_socket_buffer("net.ipv4.tcp_rmem", facts.tcp_rmem_bytes, req),
        check_socket_buffer("net.ipv4.tcp_wmem", facts.tcp_wmem_bytes, req),
        check_conntrack(facts, req),
        check_port_range(facts),
    ];
    Report { checks, budget }
}

impl Report {
    /// The worst status of all checks.
    pub fn status(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// 0, 1 or 2 for OK, WARN, FAIL.
    pub fn exit_code(&self) -> i32 {
        self.status().exit_code()
    }

    /// The checks that are not OK, for `serve` to log one warning each.
    pub fn problems(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status != Status::Ok)
    }

    /// A table: one row per check (status, name, current, needed, fix), then the budget.
    pub fn to_table(&self) -> String {
        let header = [
            "STATUS".to_string(),
            "CHECK".to_string(),
            "CURRENT".to_string(),
            format!("NEEDED FOR {}", group(self.budget.connections)),
            "FIX".to_string(),
        ];
        let rows: Vec<[String; 5]> = self
            .checks
            .iter()
            .map(|c| {
                [
                    c.status.to_string(),
                    c.name.to_string(),
                    c.current.clone(),
                    c.needed.clone(),
                    if c.fix.is_empty() {
                        "-".to_string()
                    } else {
                        c.fix.clone()
                    },
                ]
            })
            .collect();
        let mut widths = header.each_ref().map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    let pad = widths[i] - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let b = &self.budget;
        out.push('\n');
        out.push_str(&format!(
            "Memory budget for {} connections:\n",
            group(b.connections)
        ));
        out.push_str(&format!(
            "  ringcast  {} x {} B = {}\n",
            group(b.connections),
            group(b.user_bytes_per_connection),
            human_bytes(b.user_bytes)
        ));
        out.push_str(&format!(
            "  kernel    {} x {} B = {} (idle sockets; queued data extra, capped by tcp_mem)\n",
            group(b.connections),
            group(b.kernel_bytes_per_socket),
            human_bytes(b.kernel_bytes)
        ));
        out.push_str(&format!("  total     {}\n", human_bytes(b.total_bytes)));
        out.push_str(&format!(
            "  host      MemAvailable {}, MemTotal {}\n",
            b.mem_available_bytes.map_or("unknown".into(), human_bytes),
            b.mem_total_bytes.map_or("unknown".into(), human_bytes)
        ));
        out.push('\n');
        out.push_str(&format!(
            "Result: {} (exit {})\n",
            self.status(),
            self.exit_code()
        ));
        out
    }

    /// One JSON object: `{"connections", "status", "exit_code", "checks": [{"name", "current",
    /// "needed", "status", "fix"}], "budget": {...}}`. Byte counts are numbers; an unknown
    /// memory figure is `null`; `fix` is `""` for OK checks.
    pub fn to_json(&self) -> String {
        let b = &self.budget;
        let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        let checks: Vec<String> = self
            .checks
            .iter()
            .map(|c| {
                format!(
                    "{{\"name\":{},\"current\":{},\"needed\":{},\"status\":{},\"fix\":{}}}",
                    json_str(c.name),
                    json_str(&c.current),
                    json_str(&c.needed),
                    json_str(c.status.as_str()),
                    json_str(&c.fix)
                )
            })
            .collect();
        format!(
            "{{\"connections\":{},\"status\":{},\"exit_code\":{},\"checks\":[{}],\
             \"budget\":{{\"connections\":{},\"user_bytes_per_connection\":{},\
             \"user_bytes\":{},\"kernel_bytes_per_socket\":{},\"kernel_bytes\":{},\
             \"total_bytes\":{},\"mem_available_bytes\":{},\"mem_total_bytes\":{}}}}}",
            b.connections,
            json_str(self.status().as_str()),
            self.exit_code(),
            checks.join(","),
            b.connections,
            b.user_bytes_per_connection,
            b.user_bytes,
            b.kernel_bytes_per_socket,
            b.kernel_bytes,
            b.total_bytes,
            opt(b.mem_available_bytes),
            opt(b.mem_total_bytes),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Checks. Each returns one row; an unreadable fact is WARN (doctor cannot vouch for it).

fn budget(facts: &HostFacts, req: &Requirements) -> Budget {
    let n = req.connections;
    let user_bytes = n.saturating_mul(req.user_bytes_per_connection);
    let kernel_bytes = n.saturating_mul(KERNEL_BYTES_PER_SOCKET);
    Budget {
        connections: n,
        user_bytes_per_connection: req.user_bytes_per_connection,
        user_bytes,
        kernel_bytes_per_socket: KERNEL_BYTES_PER_SOCKET,
        kernel_bytes,
        total_bytes: user_bytes.saturating_add(kernel_bytes),
        mem_available_bytes: facts.mem_available_bytes,
        mem_total_bytes: facts.mem_total_bytes,
    }
}

fn check_nofile_soft(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "RLIMIT_NOFILE soft";
    let needed = req.fds_needed();
    let rec = req.nofile_recommended();
    let Some(limit) = facts.nofile else {
        return unreadable(name, format!(">= {needed}"), "self/limits");
    };
    let ok = limit.soft.allows(needed);
    Check {
        name,
        current: limit.soft.to_string(),
        needed: format!(">= {needed}"),
        status: if ok { Status::Ok } else { Status::Fail },
        fix: if ok {
            String::new()
        } else {
            format!(
                "LimitNOFILE={rec} in the systemd unit (it ignores limits.conf); shell: ulimit -n {rec}"
            )
        },
    }
}

fn check_nofile_hard(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "RLIMIT_NOFILE hard";
    let needed = req.fds_needed();
    let rec = req.nofile_recommended();
    let Some(limit) = facts.nofile else {
        return unreadable(name, format!(">= {needed}"), "self/limits");
    };
    let ok = limit.hard.allows(needed);
    Check {
        name,
        current: limit.hard.to_string(),
        needed: format!(">= {needed}"),
        status: if ok { Status::Ok } else { Status::Fail },
        fix: if ok {
            String::new()
        } else {
            format!(
                "LimitNOFILE={rec} in the systemd unit; login shells: '* hard nofile {rec}' in \
                 /etc/security/limits.conf (needs fs.nr_open >= {rec})"
            )
        },
    }
}

fn check_nr_open(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "fs.nr_open";
    let needed = req.fds_needed();
    let Some(current) = facts.fs_nr_open else {
        return unreadable(name, format!(">= {needed}"), "sys/fs/nr_open");
    };
    threshold_min(
        name,
        current,
        needed,
        Status::Fail,
        &req.nofile_recommended().to_string(),
    )
}

fn check_file_max(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "fs.file-max";
    let open_now = facts.fs_files_open.unwrap_or(0);
    let needed = req.fds_needed().saturating_add(open_now);
    let Some(current) = facts.fs_file_max else {
        return unreadable(name, format!(">= {needed}"), "sys/fs/file-max");
    };
    let rec = (2 * req.nofile_recommended()).max(needed);
    let mut check = threshold_min(name, current, needed, Status::Fail, &rec.to_string());
    check.needed = format!(">= {needed} ({} + {open_now} open now)", req.fds_needed());
    check
}

fn check_memory(b: &Budget) -> Check {
    let name = "memory";
    let needed = format!(
        "{} (ringcast {} + kernel {})",
        human_bytes(b.total_bytes),
        human_bytes(b.user_bytes),
        human_bytes(b.kernel_bytes)
    );
    let (label, available) = match (b.mem_available_bytes, b.mem_total_bytes) {
        (Some(a), _) => ("MemAvailable", a),
        (None, Some(t)) => ("MemTotal", t),
        (None, None) => return unreadable(name, needed, "meminfo"),
    };
    let comfortable = available / 100 * MEMORY_WARN_PERCENT;
    let per_conn = b.user_bytes_per_connection + b.kernel_bytes_per_socket;
    let max_connections = comfortable / per_conn.max(1);
    let status = if b.total_bytes > available {
        Status::Fail
    } else if b.total_bytes > comfortable {
        Status::Warn
    } else {
        Status::Ok
    };
    Check {
        name,
        current: format!("{label} {}", human_bytes(available)),
        needed,
        status,
        fix: if status == Status::Ok {
            String::new()
        } else {
            format!(
                "add RAM (budget <= {MEMORY_WARN_PERCENT}% of {label}) or lower the connection \
                 limit to {max_connections}"
            )
        },
    }
}

const IO_URING_FIX: &str = "allow io_uring: sysctl -w kernel.io_uring_disabled=0; in containers \
    allow io_uring_setup, io_uring_enter and io_uring_register in the seccomp profile \
    (tuning/README.md, Containers); or configure the epoll driver";

fn check_io_uring(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "io_uring";
    let needed = if req.io_uring_required {
        "available (required)"
    } else {
        "available (auto: else epoll)"
    };
    match &facts.io_uring {
        Ok(()) => Check {
            name,
            current: "available".into(),
            needed: needed.into(),
            status: Status::Ok,
            fix: String::new(),
        },
        Err(reason) => Check {
            name,
            current: if req.io_uring_required {
                format!("unavailable: {reason}")
            } else {
                format!("unavailable: {reason}; will run on epoll")
            },
            needed: needed.into(),
            status: uring_problem(req),
            fix: IO_URING_FIX.into(),
        },
    }
}

fn check_io_uring_disabled(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "kernel.io_uring_disabled";
    let fix = "sysctl -w kernel.io_uring_disabled=0 && echo 'kernel.io_uring_disabled = 0' >> \
               /etc/sysctl.d/99-ringcast.conf (for 1: or add ringcast's user to the group in \
               kernel.io_uring_group)";
    let (current, status) = match facts.io_uring_disabled {
        None => ("absent (kernel < 6.6)".to_string(), Status::Ok),
        Some(0) => ("0".to_string(), Status::Ok),
        // 1: only CAP_SYS_ADMIN or members of kernel.io_uring_group may create rings. The probe
        // ran as this process, so if it succeeded, this process is allowed.
        Some(1) if facts.io_uring.is_ok() => (
            "1 (restricted; this process is allowed)".to_string(),
            Status::Ok,
        ),
        Some(1) => (
            "1 (only kernel.io_uring_group or CAP_SYS_ADMIN)".to_string(),
            uring_problem(req),
        ),
        Some(v) => (format!("{v} (disabled for all)"), uring_problem(req)),
    };
    Check {
        name,
        current,
        needed: "0".into(),
        status,
        fix: if status == Status::Ok {
            String::new()
        } else {
            fix.into()
        },
    }
}

fn check_memlock(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "RLIMIT_MEMLOCK";
    let shards = u64::from(effective_shards(facts, req));
    let needed_bytes = shards.saturating_mul(URING_MEMLOCK_BYTES_PER_SHARD);
    let release = facts.kernel_release.as_deref();
    let version = release.and_then(parse_kernel_version);
    let current = facts
        .memlock
        .map_or("unknown".to_string(), |l| l.soft.to_string());
    if let Some(v) = version
        && v >= URING_MEMCG_KERNEL
    {
        return Check {
            name,
            current,
            needed: "any (kernel >= 5.12 charges io_uring rings to the memory cgroup)".into(),
            status: Status::Ok,
            fix: String::new(),
        };
    }
    let needed = format!(
        ">= {needed_bytes} ({shards} shards x {URING_MEMLOCK_BYTES_PER_SHARD}; kernel {} < 5.12)",
        release.unwrap_or("unknown")
    );
    let Some(limit) = facts.memlock else {
        return unreadable(name, needed, "self/limits");
    };
    let ok = limit.soft.allows(needed_bytes);
    let status = if ok { Status::Ok } else { uring_problem(req) };
    Check {
        name,
        current,
        needed,
        status,
        fix: if ok {
            String::new()
        } else {
            format!(
                "LimitMEMLOCK={needed_bytes} in the systemd unit; shell: ulimit -l {}",
                needed_bytes.div_ceil(1024)
            )
        },
    }
}

fn check_cores(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "cpu cores";
    let shards = effective_shards(facts, req);
    let ok = shards <= facts.cores;
    Check {
        name,
        current: facts.cores.to_string(),
        needed: format!(">= {shards} (one per shard)"),
        status: if ok { Status::Ok } else { Status::Warn },
        fix: if ok {
            String::new()
        } else {
            format!(
                "set shards to {} (thread-per-core: extra shards share cores)",
                facts.cores
            )
        },
    }
}

fn check_somaxconn(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "net.core.somaxconn";
    let min = Scale::for_connections(req.connections)
        .thresholds()
        .somaxconn_min;
    match facts.somaxconn {
        Some(v) => threshold_min(name, v, min, Status::Warn, &min.to_string()),
        None => unreadable(name, format!(">= {min}"), "sys/net/core/somaxconn"),
    }
}

fn check_syn_backlog(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "net.ipv4.tcp_max_syn_backlog";
    let min = Scale::for_connections(req.connections)
        .thresholds()
        .tcp_max_syn_backlog_min;
    match facts.tcp_max_syn_backlog {
        Some(v) => threshold_min(name, v, min, Status::Warn, &min.to_string()),
        None => unreadable(
            name,
            format!(">= {min}"),
            "sys/net/ipv4/tcp_max_syn_backlog",
        ),
    }
}

fn check_netdev_backlog(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "net.core.netdev_max_backlog";
    let min = Scale::for_connections(req.connections)
        .thresholds()
        .netdev_max_backlog_min;
    match facts.netdev_max_backlog {
        Some(v) => threshold_min(name, v, min, Status::Warn, &min.to_string()),
        None => unreadable(name, format!(">= {min}"), "sys/net/core/netdev_max_backlog"),
    }
}

fn check_tcp_mem(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "net.ipv4.tcp_mem";
    let page = facts.page_bytes.max(1);
    // A broadcast queued on all N sockets at once charges at least one page each.
    let pages_needed = req
        .connections
        .saturating_mul(TCP_MEM_PAGES_PER_ACTIVE_SOCKET);
    let needed = format!(
        "high >= {pages_needed} pages ({}: 1 page per socket with queued data)",
        human_bytes(pages_needed.saturating_mul(page))
    );
    let Some([low, pressure, high]) = facts.tcp_mem_pages else {
        return unreadable(name, needed, "sys/net/ipv4/tcp_mem");
    };
    let status = if high >= pages_needed {
        Status::Ok
    } else if high >= pages_needed / 4 {
        Status::Warn
    } else {
        Status::Fail
    };
    let rec = [
        low.max(pages_needed / 2),
        pressure.max(pages_needed),
        high.max(pages_needed.saturating_mul(2)),
    ];
    let in_use = facts
        .tcp_mem_in_use_pages
        .map_or(String::new(), |p| format!(", {p} in use"));
    Check {
        name,
        current: format!(
            "{low} {pressure} {high} pages (high {}{in_use})",
            human_bytes(high.saturating_mul(page))
        ),
        needed,
        status,
        fix: if status == Status::Ok {
            String::new()
        } else {
            sysctl_fix(name, &format!("{} {} {}", rec[0], rec[1], rec[2]))
        },
    }
}

/// Idle sockets allocate nothing, but a slow reader's socket grows to the default (and, with
/// autotuning, to the max) before ringcast's own send queue limit notices: N x default is what
/// N slow readers can pin.
fn check_socket_buffer(name: &'static str, value: Option<[u64; 3]>, req: &Requirements) -> Check {
    let max_default = Scale::for_connections(req.connections)
        .thresholds()
        .socket_buffer_default_max;
    let needed = format!("default <= {max_default}");
    let Some([min, default, max]) = value else {
        return unreadable(name, needed, &format!("sys/{}", name.replace('.', "/")));
    };
    let ok = default <= max_default;
    Check {
        name,
        current: format!("{min} {default} {max}"),
        needed,
        status: if ok { Status::Ok } else { Status::Warn },
        fix: if ok {
            String::new()
        } else {
            sysctl_fix(name, &format!("{} 16384 {max}", min.min(4096)))
        },
    }
}

fn check_conntrack(facts: &HostFacts, req: &Requirements) -> Check {
    let name = "net.netfilter.nf_conntrack_max";
    let n = req.connections;
    let Some(max) = facts.conntrack_max else {
        return Check {
            name,
            current: "nf_conntrack not loaded".into(),
            needed: format!("not loaded, or >= {n}"),
            status: Status::Ok,
            fix: String::new(),
        };
    };
    let mut check = threshold_min(
        name,
        max,
        n,
        Status::Warn,
        &req.nofile_recommended().to_string(),
    );
    check.needed = format!("not loaded, or >= {n}");
    if check.status != Status::Ok {
        check.fix.push_str(
            " (or exempt the listen port: iptables -t raw -A PREROUTING -p tcp --dport <port> \
             -j NOTRACK)",
        );
    }
    check
}

fn check_port_range(facts: &HostFacts) -> Check {
    let name = "net.ipv4.ip_local_port_range";
    let needed = format!(
        ">= {PORT_RANGE_SPAN_MIN} ports (load generators and proxies only; the server uses one port)"
    );
    let Some([lo, hi]) = facts.ip_local_port_range else {
        return unreadable(name, needed, "sys/net/ipv4/ip_local_port_range");
    };
    let span = hi.saturating_sub(lo).saturating_add(1);
    let ok = hi >= lo && span >= PORT_RANGE_SPAN_MIN;
    Check {
        name,
        current: format!("{lo}-{hi} ({span} ports)"),
        needed,
        status: if ok { Status::Ok } else { Status::Warn },
        fix: if ok {
            String::new()
        } else {
            sysctl_fix(name, "1024 65535")
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// FAIL when io_uring is required, WARN when ringcast would fall back to epoll.
fn uring_problem(req: &Requirements) -> Status {
    if req.io_uring_required {
        Status::Fail
    } else {
        Status::Warn
    }
}

fn effective_shards(facts: &HostFacts, req: &Requirements) -> u32 {
    if req.shards == 0 {
        facts.cores.max(1)
    } else {
        req.shards
    }
}

/// A sysctl that must be at least `needed`; `below` is the status when it is not.
fn threshold_min(name: &'static str, current: u64, needed: u64, below: Status, rec: &str) -> Check {
    let ok = current >= needed;
    Check {
        name,
        current: current.to_string(),
        needed: format!(">= {needed}"),
        status: if ok { Status::Ok } else { below },
        fix: if ok {
            String::new()
        } else {
            sysctl_fix(name, rec)
        },
    }
}

fn unreadable(name: &'static str, needed: String, file: &str) -> Check {
    Check {
        name,
        current: "unknown".into(),
        needed,
        status: Status::Warn,
        fix: format!("could not read <proc root>/{file}: check it by hand"),
    }
}

/// The runtime and the persistent form in one line.
fn sysctl_fix(key: &str, value: &str) -> String {
    let arg = if value.contains(' ') {
        format!("\"{value}\"")
    } else {
        value.to_string()
    };
    format!("sysctl -w {key}={arg} && echo '{key} = {value}' >> /etc/sysctl.d/99-ringcast.conf")
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_fields<const K: usize>(path: &Path) -> Option<[u64; K]> {
    let text = fs::read_to_string(path).ok()?;
    let mut out = [0; K];
    let mut fields = text.split_whitespace();
    for slot in &mut out {
        *slot = fields.next()?.parse().ok()?;
    }
    Some(out)
}

/// `Key:   12345 kB` in /proc/meminfo, in bytes.
fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (k, rest) = line.split_once(':')?;
        if k != key {
            return None;
        }
        let mut it = rest.split_whitespace();
        let value: u64 = it.next()?.parse().ok()?;
        match it.next() {
            Some("kB") => value.checked_mul(1024),
            None => Some(value),
            Some(_) => None,
        }
    })
}

/// A row of /proc/self/limits: `Max open files   1024   524288   files`.
fn parse_limit(limits: &str, row: &str) -> Option<Rlimit> {
    let line = limits.lines().find(|l| l.starts_with(row))?;
    let mut it = line[row.len()..].split_whitespace();
    let value = |s: &str| match s {
        "unlimited" => Some(LimitValue::Unlimited),
        s => s.parse().ok().map(LimitValue::Finite),
    };
    let soft = value(it.next()?)?;
    let hard = value(it.next()?)?;
    Some(Rlimit { soft, hard })
}

fn live_rlimit(resource: Resource) -> Rlimit {
    let limit = rustix::process::getrlimit(resource);
    // rustix maps RLIM_INFINITY to None.
    let value = |v: Option<u64>| v.map_or(LimitValue::Unlimited, LimitValue::Finite);
    Rlimit {
        soft: value(limit.current),
        hard: value(limit.maximum),
    }
}

fn live_kernel_release() -> Option<String> {
    let uname = rustix::system::uname();
    let release = uname.release().to_str().ok()?.trim();
    (!release.is_empty()).then(|| release.to_string())
}

/// `TCP: inuse 5 orphan 0 tw 0 alloc 7 mem 1` in /proc/net/sockstat.
fn sockstat_tcp(sockstat: &str, key: &str) -> Option<u64> {
    let rest = sockstat.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let tokens: Vec<&str> = rest.split_whitespace().collect();
    tokens
        .chunks(2)
        .find(|pair| pair.len() == 2 && pair[0] == key)
        .and_then(|pair| pair[1].parse().ok())
}

fn read_cores(proc_root: &Path) -> u32 {
    let from_status = fs::read_to_string(proc_root.join("self/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .and_then(count_cpu_list)
        });
    from_status
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
        })
        .unwrap_or(1)
}

/// "0-3,8,10-11" -> 7.
fn count_cpu_list(list: &str) -> Option<u32> {
    let mut count = 0u32;
    for part in list.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<u32>().ok()?, hi.parse::<u32>().ok()?),
            None => {
                let v = part.parse::<u32>().ok()?;
                (v, v)
            }
        };
        count = count.checked_add(hi.checked_sub(lo)? + 1)?;
    }
    (count > 0).then_some(count)
}

/// `KernelPageSize:  4 kB` from the first mapping in self/smaps.
fn read_page_bytes(proc_root: &Path) -> Option<u64> {
    let file = fs::File::open(proc_root.join("self/smaps")).ok()?;
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("KernelPageSize:").and_then(|rest| {
                let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
                kib.checked_mul(1024)
            })
        })
}

/// "5.10.0-21-amd64" -> (5, 10).
fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// 1048576 -> "1,048,576".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    /// Requirements with the 256-byte figure these tests' arithmetic was written for.
    fn req_256(connections: u64) -> Requirements {
        Requirements {
            user_bytes_per_connection: 256,
            ..Requirements::new(connections)
        }
    }

    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    const GIB_KB: u64 = 1024 * 1024;

    /// A fake proc root in the temp dir, healthy for 1M connections; removed on drop.
    struct FakeRoot {
        dir: PathBuf,
    }

    impl FakeRoot {
        fn healthy() -> FakeRoot {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "ringcast-doctor-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            let root = FakeRoot { dir };
            root.limits("2097152", "2097152", "unlimited");
            root.write("sys/kernel/osrelease", "6.8.0-45-generic\n");
            root.meminfo(64 * GIB_KB, 60 * GIB_KB);
            root.write("self/status", "Name:\tringcast\nCpus_allowed_list:\t0-15\n");
            root.write(
                "self/smaps",
                "55d0-55d1 r--p 0 08:01 1 /x\nKernelPageSize:        4 kB\n",
            );
            root.write("sys/fs/nr_open", "2097152\n");
            root.write("sys/fs/file-max", "9223372036854775807\n");
            root.write("sys/fs/file-nr", "1504\t0\t9223372036854775807\n");
            root.write("sys/net/core/somaxconn", "65535\n");
            root.write("sys/net/ipv4/tcp_max_syn_backlog", "65535\n");
            root.write("sys/net/core/netdev_max_backlog", "16384\n");
            root.write("sys/net/ipv4/tcp_mem", "500000\t1000000\t2000000\n");
            root.write("sys/net/ipv4/tcp_rmem", "4096\t16384\t4194304\n");
            root.write("sys/net/ipv4/tcp_wmem", "4096\t16384\t4194304\n");
            root.write("sys/net/ipv4/ip_local_port_range", "32768\t60999\n");
            root.write("sys/kernel/io_uring_disabled", "0\n");
            root.write(
                "net/sockstat",
                "sockets: used 14\nTCP: inuse 3 orphan 0 tw 0 alloc 5 mem 259\nUDP: inuse 0 mem 0\n",
            );
            root
        }

        fn write(&self, rel: &str, contents: &str) {
            let path = self.dir.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
        }

        fn remove(&self, rel: &str) {
            fs::remove_file(self.dir.join(rel)).unwrap();
        }

        fn limits(&self, nofile_soft: &str, nofile_hard: &str, memlock: &str) {
            self.write(
                "self/limits",
                &format!(
                    "Limit                     Soft Limit           Hard Limit           Units     \n\
                     Max cpu time              unlimited            unlimited            seconds   \n\
                     Max open files            {nofile_soft:<20} {nofile_hard:<20} files     \n\
                     Max locked memory         {memlock:<20} {memlock:<20} bytes     \n"
                ),
            );
        }

        fn meminfo(&self, total_kb: u64, available_kb: u64) {
            self.write(
                "meminfo",
                &format!(
                    "MemTotal:       {total_kb} kB\nMemFree:        {available_kb} kB\n\
                     MemAvailable:   {available_kb} kB\n"
                ),
            );
        }

        fn facts(&self) -> HostFacts {
            HostFacts::read(&self.dir, Ok(()))
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn check<'a>(report: &'a Report, name: &str) -> &'a Check {
        report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check named {name}"))
    }

    fn status_of(facts: &HostFacts, req: &Requirements, name: &str) -> Status {
        check(&evaluate(facts, req), name).status
    }

    const MILLION: u64 = 1_000_000;

    #[test]
    fn healthy_host_passes_every_check_for_1m() {
        let root = FakeRoot::healthy();
        let facts = root.facts();
        assert_eq!(facts.cores, 16);
        assert_eq!(facts.page_bytes, 4096);
        assert_eq!(facts.tcp_sockets_in_use, Some(3));
        assert_eq!(facts.tcp_mem_in_use_pages, Some(259));
        let report = evaluate(&facts, &Requirements::new(MILLION));
        let bad: Vec<String> = report.problems().map(|c| c.to_string()).collect();
        assert!(bad.is_empty(), "{bad:#?}");
        assert_eq!(report.exit_code(), 0);
        assert!(report.checks.iter().all(|c| c.fix.is_empty()));
    }

    #[test]
    fn every_check_has_a_row() {
        let root = FakeRoot::healthy();
        let report = evaluate(&root.facts(), &Requirements::new(MILLION));
        let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "RLIMIT_NOFILE soft",
                "RLIMIT_NOFILE hard",
                "fs.nr_open",
                "fs.file-max",
                "memory",
                "io_uring",
                "kernel.io_uring_disabled",
                "RLIMIT_MEMLOCK",
                "cpu cores",
                "net.core.somaxconn",
                "net.ipv4.tcp_max_syn_backlog",
                "net.core.netdev_max_backlog",
                "net.ipv4.tcp_mem",
                "net.ipv4.tcp_rmem",
                "net.ipv4.tcp_wmem",
                "net.netfilter.nf_conntrack_max",
                "net.ipv4.ip_local_port_range",
            ]
        );
    }

    #[test]
    fn fds_needed_adds_a_tenth_plus_1024() {
        let req = Requirements::new(MILLION);
        assert_eq!(req.fds_needed(), 1_101_024);
        assert_eq!(req.nofile_recommended(), 2_097_152);
        assert_eq!(Requirements::new(100_000).nofile_recommended(), 131_072);
        assert_eq!(Requirements::new(10_000).nofile_recommended(), 65_536);
    }

    #[test]
    fn nofile_soft_below_n_plus_headroom_fails_with_limitnofile_fix() {
        let root = FakeRoot::healthy();
        root.limits("20000", "2097152", "unlimited");
        let report = evaluate(&root.facts(), &Requirements::new(MILLION));
        let c = check(&report, "RLIMIT_NOFILE soft");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.current, "20000");
        assert_eq!(c.needed, ">= 1101024");
        assert!(c.fix.contains("LimitNOFILE=2097152"), "{}", c.fix);
        assert!(c.fix.contains("ulimit -n 2097152"), "{}", c.fix);
        assert_eq!(check(&report, "RLIMIT_NOFILE hard").status, Status::Ok);
        assert_eq!(report.exit_code(), 2);
    }

    #[test]
    fn nofile_hard_below_n_plus_headroom_fails() {
        let root = FakeRoot::healthy();
        root.limits("1024", "524288", "unlimited");
        let report = evaluate(&root.facts(), &Requirements::new(MILLION));
        let c = check(&report, "RLIMIT_NOFILE hard");
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.contains("LimitNOFILE=2097152"));
        assert!(c.fix.contains("limits.conf"));
    }

    #[test]
    fn nofile_unlimited_and_exact_need_pass() {
        let root = FakeRoot::healthy();
        root.limits("1101024", "unlimited", "unlimited");
        let facts = root.facts();
        let req = Requirements::new(MILLION);
        assert_eq!(status_of(&facts, &req, "RLIMIT_NOFILE soft"), Status::Ok);
        assert_eq!(status_of(&facts, &req, "RLIMIT_NOFILE hard"), Status::Ok);
    }

    #[test]
    fn missing_overrides_fall_back_to_the_live_process() {
        let root = FakeRoot::healthy();
        root.remove("self/limits");
        root.remove("sys/kernel/osrelease");
        let facts = root.facts();
        let live = rustix::process::getrlimit(Resource::Nofile);
        let live = live
            .current
            .map_or(LimitValue::Unlimited, LimitValue::Finite);
        assert_eq!(facts.nofile.map(|l| l.soft), Some(live));
        assert!(facts.memlock.is_some());
        assert!(facts.kernel_release.is_some());
    }

    #[test]
    fn unknown_rlimits_warn() {
        let root = FakeRoot::healthy();
        let mut facts = root.facts();
        facts.nofile = None;
        let report = evaluate(&facts, &Requirements::new(MILLION));
        let c = check(&report, "RLIMIT_NOFILE soft");
        assert_eq!((c.status, c.current.as_str()), (Status::Warn, "unknown"));
        assert!(c.fix.contains("self/limits"));
    }

    #[test]
    fn default_nr_open_makes_1m_impossible() {
        let root = FakeRoot::healthy();
        root.write("sys/fs/nr_open", "1048576\n");
        let facts = root.facts();
        let report = evaluate(&facts, &Requirements::new(MILLION));
        let c = check(&report, "fs.nr_open");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(
            c.fix,
            "sysctl -w fs.nr_open=2097152 && echo 'fs.nr_open = 2097152' >> \
             /etc/sysctl.d/99-ringcast.conf"
        );
        let req = Requirements::new(100_000);
        assert_eq!(status_of(&facts, &req, "fs.nr_open"), Status::Ok);
    }

    #[test]
    fn file_max_below_need_plus_open_files_fails() {
        let root = FakeRoot::healthy();
        root.write("sys/fs/file-max", "1101024\n");
        let report = evaluate(&root.facts(), &Requirements::new(MILLION));
        let c = check(&report, "fs.file-max");
        assert_eq!(c.status, Status::Fail, "1504 files are already open");
        assert!(c.needed.starts_with(">= 1102528"), "{}", c.needed);
        assert!(c.fix.contains("sysctl -w fs.file-max=4194304"), "{}", c.fix);
        root.write("sys/fs/file-max", "1102528\n");
        let req = Requirements::new(MILLION);
        assert_eq!(status_of(&root.facts(), &req, "fs.file-max"), Status::Ok);
    }

    #[test]
    fn budget_is_n_times_user_plus_kernel_bytes() {
        let root = FakeRoot::healthy();
        let report = evaluate(&root.facts(), &req_256(MILLION));
        let b = &report.budget;
        assert_eq!(b.user_bytes, 256_000_000);
        assert_eq!(b.kernel_bytes, 4_096_000_000);
        assert_eq!(b.total_bytes, 4_352_000_000);
        assert_eq!(b.mem_available_bytes, Some(60 * GIB_KB * 1024));
    }

    #[test]
    fn memory_below_budget_fails_and_tight_budget_warns() {
        let root = FakeRoot::healthy();
        let req = req_256(MILLION); // 4,352,000,000 bytes
        root.meminfo(8 * GIB_KB, 4 * GIB_KB); // 4,294,967,296 available
        let report = evaluate(&root.facts(), &req);
        let c = check(&report, "memory");
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.fix.contains("lower the connection limit to 740171"),
            "{}",
            c.fix
        );
        root.meminfo(8 * GIB_KB, 5 * GIB_KB); // budget is 81% of it
        assert_eq!(status_of(&root.facts(), &req, "memory"), Status::Warn);
        root.meminfo(8 * GIB_KB, 6 * GIB_KB); // 68%
        assert_eq!(status_of(&root.facts(), &req, "memory"), Status::Ok);
    }

    #[test]
    fn memory_falls_back_to_memtotal_then_warns_unknown() {
        let root = FakeRoot::healthy();
        let req = req_256(MILLION);
        root.write("meminfo", "MemTotal:  4194304 kB\n");
        let report = evaluate(&root.facts(), &req);
        let c = check(&report, "memory");
        assert_eq!(c.status, Status::Fail);
        assert!(c.current.starts_with("MemTotal"), "{}", c.current);
        root.remove("meminfo");
        assert_eq!(status_of(&root.facts(), &req, "memory"), Status::Warn);
    }

    #[test]
    fn io_uring_unavailable_warns_on_auto_and_fails_when_required() {
        let root = FakeRoot::healthy();
        let facts = HostFacts::read(&root.dir, Err("EPERM from io_uring_setup".into()));
        let mut req = Requirements::new(10_000);
        let report = evaluate(&facts, &req);
        let c = check(&report, "io_uring");
        assert_eq!(c.status, Status::Warn);
        assert!(c.current.contains("will run on epoll"), "{}", c.current);
        assert!(c.current.contains("EPERM"));
        assert!(c.fix.contains("seccomp"));
        req.io_uring_required = true;
        assert_eq!(status_of(&facts, &req, "io_uring"), Status::Fail);
        assert_eq!(evaluate(&facts, &req).exit_code(), 2);
    }

    #[test]
    fn io_uring_disabled_sysctl() {
        let root = FakeRoot::healthy();
        let mut req = Requirements::new(10_000);
        let name = "kernel.io_uring_disabled";
        root.write("sys/kernel/io_uring_disabled", "2\n");
        let blocked = HostFacts::read(&root.dir, Err("EPERM".into()));
        let report = evaluate(&blocked, &req);
        assert_eq!(check(&report, name).status, Status::Warn);
        assert!(
            check(&report, name)
                .fix
                .contains("sysctl -w kernel.io_uring_disabled=0")
        );
        req.io_uring_required = true;
        assert_eq!(status_of(&blocked, &req, name), Status::Fail);

        root.write("sys/kernel/io_uring_disabled", "1\n");
        assert_eq!(
            status_of(&root.facts(), &req, name),
            Status::Ok,
            "probe passed"
        );
        let blocked = HostFacts::read(&root.dir, Err("EPERM".into()));
        assert_eq!(status_of(&blocked, &req, name), Status::Fail);

        root.remove("sys/kernel/io_uring_disabled");
        let report = evaluate(&root.facts(), &req);
        assert_eq!(check(&report, name).status, Status::Ok);
        assert!(check(&report, name).current.contains("absent"));
    }

    #[test]
    fn memlock_matters_only_before_5_12() {
        let root = FakeRoot::healthy();
        root.limits("2097152", "2097152", "65536");
        let mut req = Requirements::new(10_000);
        req.shards = 4;
        let name = "RLIMIT_MEMLOCK";
        assert_eq!(status_of(&root.facts(), &req, name), Status::Ok, "6.8");
        root.write("sys/kernel/osrelease", "5.12.0\n");
        assert_eq!(status_of(&root.facts(), &req, name), Status::Ok, "5.12");
        root.write("sys/kernel/osrelease", "5.10.0-21-amd64\n");
        let report = evaluate(&root.facts(), &req);
        let c = check(&report, name);
        assert_eq!(c.status, Status::Warn);
        assert!(c.needed.starts_with(">= 4194304"), "{}", c.needed);
        assert!(c.fix.contains("LimitMEMLOCK=4194304"), "{}", c.fix);
        assert!(c.fix.contains("ulimit -l 4096"), "{}", c.fix);
        req.io_uring_required = true;
        assert_eq!(status_of(&root.facts(), &req, name), Status::Fail);
        root.limits("2097152", "2097152", "4194304");
        assert_eq!(status_of(&root.facts(), &req, name), Status::Ok);
    }

    #[test]
    fn more_shards_than_cores_warns() {
        let root = FakeRoot::healthy();
        root.write("self/status", "Cpus_allowed_list:\t0-1\n");
        let mut req = Requirements::new(10_000);
        req.shards = 2;
        assert_eq!(status_of(&root.facts(), &req, "cpu cores"), Status::Ok);
        req.shards = 3;
        assert_eq!(status_of(&root.facts(), &req, "cpu cores"), Status::Warn);
        req.shards = 0;
        assert_eq!(status_of(&root.facts(), &req, "cpu cores"), Status::Ok);
    }

    #[test]
    fn small_somaxconn_warns_at_1m_but_not_at_10k() {
        let root = FakeRoot::healthy();
        root.write("sys/net/core/somaxconn", "4096\n");
        let facts = root.facts();
        let report = evaluate(&facts, &Requirements::new(MILLION));
        let c = check(&report, "net.core.somaxconn");
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.starts_with("sysctl -w net.core.somaxconn=65535"));
        assert_eq!(report.exit_code(), 1);
        let req = Requirements::new(100_000);
        assert_eq!(status_of(&facts, &req, "net.core.somaxconn"), Status::Ok);
    }

    #[test]
    fn small_syn_backlog_warns() {
        let root = FakeRoot::healthy();
        root.write("sys/net/ipv4/tcp_max_syn_backlog", "2048\n");
        let facts = root.facts();
        let name = "net.ipv4.tcp_max_syn_backlog";
        assert_eq!(
            status_of(&facts, &Requirements::new(100_000), name),
            Status::Warn
        );
        assert_eq!(
            status_of(&facts, &Requirements::new(10_000), name),
            Status::Ok
        );
    }

    #[test]
    fn default_netdev_backlog_warns_from_100k() {
        let root = FakeRoot::healthy();
        root.write("sys/net/core/netdev_max_backlog", "1000\n");
        let facts = root.facts();
        let name = "net.core.netdev_max_backlog";
        assert_eq!(
            status_of(&facts, &Requirements::new(100_000), name),
            Status::Warn
        );
        assert_eq!(
            status_of(&facts, &Requirements::new(10_000), name),
            Status::Ok
        );
    }

    #[test]
    fn tcp_mem_is_judged_in_pages() {
        let root = FakeRoot::healthy();
        let req = Requirements::new(MILLION);
        let name = "net.ipv4.tcp_mem";
        // A 24 GiB host's default: high = 575,802 pages (2.2 GiB) < 1M pages.
        root.write("sys/net/ipv4/tcp_mem", "287901\t383868\t575802\n");
        let report = evaluate(&root.facts(), &req);
        let c = check(&report, name);
        assert_eq!(c.status, Status::Warn);
        assert!(c.current.contains("pages"), "{}", c.current);
        assert!(c.current.contains("259 in use"), "{}", c.current);
        assert_eq!(
            c.fix,
            "sysctl -w net.ipv4.tcp_mem=\"500000 1000000 2000000\" && echo 'net.ipv4.tcp_mem = \
             500000 1000000 2000000' >> /etc/sysctl.d/99-ringcast.conf"
        );
        root.write("sys/net/ipv4/tcp_mem", "100000\t150000\t200000\n");
        assert_eq!(status_of(&root.facts(), &req, name), Status::Fail);
        root.write("sys/net/ipv4/tcp_mem", "500000\t800000\t1000000\n");
        assert_eq!(status_of(&root.facts(), &req, name), Status::Ok);
    }

    #[test]
    fn large_buffer_defaults_warn_at_scale() {
        let root = FakeRoot::healthy();
        root.write("sys/net/ipv4/tcp_rmem", "4096\t131072\t33554432\n");
        root.write("sys/net/ipv4/tcp_wmem", "4096\t65536\t4194304\n");
        let facts = root.facts();
        let report = evaluate(&facts, &Requirements::new(MILLION));
        let rmem = check(&report, "net.ipv4.tcp_rmem");
        assert_eq!(rmem.status, Status::Warn);
        assert!(
            rmem.fix
                .starts_with("sysctl -w net.ipv4.tcp_rmem=\"4096 16384 33554432\""),
            "{}",
            rmem.fix
        );
        assert_eq!(check(&report, "net.ipv4.tcp_wmem").status, Status::Warn);
        let small = Requirements::new(10_000);
        assert_eq!(status_of(&facts, &small, "net.ipv4.tcp_rmem"), Status::Ok);
        assert_eq!(status_of(&facts, &small, "net.ipv4.tcp_wmem"), Status::Ok);
    }

    #[test]
    fn conntrack_warns_only_when_loaded_and_small() {
        let root = FakeRoot::healthy();
        let req = Requirements::new(MILLION);
        let name = "net.netfilter.nf_conntrack_max";
        let report = evaluate(&root.facts(), &req);
        assert!(check(&report, name).current.contains("not loaded"));
        root.write("sys/net/netfilter/nf_conntrack_max", "262144\n");
        let report = evaluate(&root.facts(), &req);
        let c = check(&report, name);
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.fix
                .starts_with("sysctl -w net.netfilter.nf_conntrack_max=2097152")
        );
        assert!(c.fix.contains("NOTRACK"));
        root.write("sys/net/netfilter/nf_conntrack_max", "1048576\n");
        assert_eq!(status_of(&root.facts(), &req, name), Status::Ok);
    }

    #[test]
    fn tiny_port_range_warns_and_says_it_is_for_clients() {
        let root = FakeRoot::healthy();
        let name = "net.ipv4.ip_local_port_range";
        let req = Requirements::new(10_000);
        let report = evaluate(&root.facts(), &req);
        assert!(check(&report, name).needed.contains("load generators"));
        root.write("sys/net/ipv4/ip_local_port_range", "60000\t60500\n");
        let report = evaluate(&root.facts(), &req);
        let c = check(&report, name);
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.contains("ip_local_port_range=\"1024 65535\""));
    }

    #[test]
    fn unreadable_sysctl_warns() {
        let root = FakeRoot::healthy();
        root.remove("sys/net/core/somaxconn");
        let report = evaluate(&root.facts(), &Requirements::new(10_000));
        let c = check(&report, "net.core.somaxconn");
        assert_eq!((c.status, c.current.as_str()), (Status::Warn, "unknown"));
        assert!(c.fix.contains("sys/net/core/somaxconn"));
    }

    #[test]
    fn exit_code_is_the_worst_status() {
        let root = FakeRoot::healthy();
        let req = Requirements::new(MILLION);
        assert_eq!(evaluate(&root.facts(), &req).exit_code(), 0);
        root.write("sys/net/core/somaxconn", "128\n");
        let report = evaluate(&root.facts(), &req);
        assert_eq!((report.status(), report.exit_code()), (Status::Warn, 1));
        assert_eq!(report.problems().count(), 1);
        root.write("sys/fs/nr_open", "1048576\n");
        let report = evaluate(&root.facts(), &req);
        assert_eq!((report.status(), report.exit_code()), (Status::Fail, 2));
        assert_eq!(report.problems().count(), 2);
        assert_eq!(EXIT_USAGE, 64);
    }

    #[test]
    fn scale_boundaries() {
        assert_eq!(Scale::for_connections(10_000), Scale::Small);
        assert_eq!(Scale::for_connections(10_001), Scale::Medium);
        assert_eq!(Scale::for_connections(100_000), Scale::Medium);
        assert_eq!(Scale::for_connections(100_001), Scale::Large);
        assert_eq!(Scale::Large.thresholds().somaxconn_min, 65_535);
    }

    #[test]
    fn parsers_handle_real_formats() {
        assert_eq!(count_cpu_list("0-3,8,10-11\n"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("x"), None);
        assert_eq!(parse_kernel_version("5.10.0-21-amd64"), Some((5, 10)));
        assert_eq!(parse_kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_kernel_version("garbage"), None);
        assert_eq!(group(1_048_576), "1,048,576");
        assert_eq!(group(999), "999");
        assert_eq!(human_bytes(4_352_000_000), "4.1 GiB");
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        let limits = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(
            parse_limit(limits, "Max open files"),
            Some(Rlimit {
                soft: LimitValue::Unlimited,
                hard: LimitValue::Unlimited
            })
        );
        assert_eq!(
            sockstat_tcp("TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 259\n", "mem"),
            Some(259)
        );
    }

    #[test]
    fn table_has_one_row_per_check_with_fix_lines_and_budget() {
        let root = FakeRoot::healthy();
        root.write("sys/fs/nr_open", "1048576\n");
        root.write("sys/net/core/somaxconn", "4096\n");
        let report = evaluate(&root.facts(), &Requirements::new(MILLION));
        let table = report.to_table();
        assert!(table.starts_with("STATUS"));
        assert!(table.contains("NEEDED FOR 1,000,000"));
        for c in &report.checks {
            let row = table
                .lines()
                .find(|l| l.split("  ").any(|cell| cell.trim() == c.name))
                .unwrap_or_else(|| panic!("no row for {}", c.name));
            assert!(row.starts_with(c.status.as_str()), "{row}");
        }
        assert!(table.contains(
            "sysctl -w fs.nr_open=2097152 && echo 'fs.nr_open = 2097152' >> \
             /etc/sysctl.d/99-ringcast.conf"
        ));
        assert!(table.contains("sysctl -w net.core.somaxconn=65535"));
        assert!(table.contains("Memory budget for 1,000,000 connections"));
        assert!(table.contains("1,000,000 x 4,096 B = 3.8 GiB"), "{table}");
        assert!(table.contains("Result: FAIL (exit 2)"));
    }

    #[test]
    fn json_has_checks_array_and_budget() {
        let root = FakeRoot::healthy();
        root.write("sys/net/core/somaxconn", "4096\n");
        let facts = HostFacts::read(&root.dir, Err("seccomp \"blocked\"".into()));
        let report = evaluate(&facts, &req_256(MILLION));
        let json = json::parse(&report.to_json()).expect("valid JSON");
        assert_eq!(json.get("status"), Some(&json::Value::Str("WARN".into())));
        assert_eq!(json.get("exit_code"), Some(&json::Value::Num(1.0)));
        let Some(json::Value::Arr(checks)) = json.get("checks") else {
            panic!("checks is not an array");
        };
        assert_eq!(checks.len(), report.checks.len());
        for (value, c) in checks.iter().zip(&report.checks) {
            let json::Value::Obj(fields) = value else {
                panic!("check is not an object")
            };
            let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["name", "current", "needed", "status", "fix"]);
            assert_eq!(value.get("name"), Some(&json::Value::Str(c.name.into())));
            assert_eq!(
                value.get("current"),
                Some(&json::Value::Str(c.current.clone()))
            );
            assert_eq!(value.get("fix"), Some(&json::Value::Str(c.fix.clone())));
        }
        let budget = json.get("budget").expect("budget");
        assert_eq!(
            budget.get("total_bytes"),
            Some(&json::Value::Num(4_352_000_000.0))
        );
        assert_eq!(
            budget.get("kernel_bytes_per_socket"),
            Some(&json::Value::Num(4096.0))
        );
        root.remove("meminfo");
        let report = evaluate(&root.facts(), &req_256(MILLION));
        let json = json::parse(&report.to_json()).expect("valid JSON");
        let budget = json.get("budget").expect("budget");
        assert_eq!(budget.get("mem_available_bytes"), Some(&json::Value::Null));
    }

    #[test]
    fn reads_the_real_host() {
        let facts = HostFacts::read(Path::new("/proc"), Ok(()));
        assert!(facts.kernel_release.is_some(), "{facts:?}");
        assert!(facts.nofile.is_some(), "{facts:?}");
        assert!(facts.mem_total_bytes.is_some(), "{facts:?}");
        assert!(facts.fs_nr_open.is_some(), "{facts:?}");
        assert!(facts.cores >= 1);
        for n in [10_000, MILLION] {
            let report = evaluate(&facts, &Requirements::new(n));
            assert_eq!(report.checks.len(), 17);
            assert!(json::parse(&report.to_json()).is_some());
            println!("{}", report.to_table());
        }
    }

    /// A minimal JSON reader, enough to check that `to_json` is well formed (no dev-deps).
    mod json {
        #[derive(Debug, PartialEq)]
        pub enum Value {
            Null,
            Bool(bool),
            Num(f64),
            Str(String),
            Arr(Vec<Value>),
            Obj(Vec<(String, Value)>),
        }

        impl Value {
            pub fn get(&self, key: &str) -> Option<&Value> {
                match self {
                    Value::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                    _ => None,
                }
            }
        }

        pub fn parse(text: &str) -> Option<Value> {
            let mut p = Parser {
                s: text.as_bytes(),
                i: 0,
            };
            let v = p.value()?;
            p.ws();
            (p.i == p.s.len()).then_some(v)
        }

        struct Parser<'a> {
            s: &'a [u8],
            i: usize,
        }

        impl Parser<'_> {
            fn ws(&mut self) {
                while self.s.get(self.i).is_some_and(|b| b.is_ascii_whitespace()) {
                    self.i += 1;
                }
            }

            fn eat(&mut self, lit: &str) -> Option<()> {
                self.s[self.i..].starts_with(lit.as_bytes()).then(|| {
                    self.i += lit.len();
                })
            }

            fn value(&mut self) -> Option<Value> {
                self.ws();
                match *self.s.get(self.i)? {
                    b'n' => self.eat("null").map(|_| Value::Null),
                    b't' => self.eat("true").map(|_| Value::Bool(true)),
                    b'f' => self.eat("false").map(|_| Value::Bool(false)),
                    b'"' => self.string().map(Value::Str),
                    b'[' => {
                        self.i += 1;
                        let mut items = Vec::new();
                        self.ws();
                        if self.eat("]").is_some() {
                            return Some(Value::Arr(items));
                        }
                        loop {
                            items.push(self.value()?);
                            self.ws();
                            if self.eat("]").is_some() {
                                return Some(Value::Arr(items));
                            }
                            self.eat(",")?;
                        }
                    }
                    b'{' => {
                        self.i += 1;
                        let mut fields = Vec::new();
                        self.ws();
                        if self.eat("}").is_some() {
                            return Some(Value::Obj(fields));
                        }
                        loop {
                            self.ws();
                            let key = self.string()?;
                            self.ws();
                            self.eat(":")?;
                            fields.push((key, self.value()?));
                            self.ws();
                            if self.eat("}").is_some() {
                                return Some(Value::Obj(fields));
                            }
                            self.eat(",")?;
                        }
                    }
                    _ => {
                        let start = self.i;
                        while self
                            .s
                            .get(self.i)
                            .is_some_and(|b| b"+-.eE0123456789".contains(b))
                        {
                            self.i += 1;
                        }
                        let num = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                        num.parse().ok().map(Value::Num)
                    }
                }
            }

            fn string(&mut self) -> Option<String> {
                self.eat("\"")?;
                let mut out = String::new();
                loop {
                    let rest = std::str::from_utf8(&self.s[self.i..]).ok()?;
                    let ch = rest.chars().next()?;
                    self.i += ch.len_utf8();
                    match ch {
                        '"' => return Some(out),
                        '\\' => {
                            let esc = *self.s.get(self.i)?;
                            self.i += 1;
                            match esc {
                                b'"' => out.push('"'),
                                b'\\' => out.push('\\'),
                                b'/' => out.push('/'),
                                b'n' => out.push('\n'),
                                b'r' => out.push('\r'),
                                b't' => out.push('\t'),
                                b'u' => {
                                    let hex = std::str::from_utf8(self.s.get(self.i..self.i + 4)?)
                                        .ok()?;
                                    self.i += 4;
                                    out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
                                }
                                _ => return None,
                            }
                        }
                        c if (c as u32) < 0x20 => return None,
                        c => out.push(c),
                    }
                }
            }
        }
    }
}
