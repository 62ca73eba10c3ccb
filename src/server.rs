//! Starts the shards: binds one listener per shard on the same address (SO_REUSEPORT), runs each
//! shard on its own thread (optionally pinned to a CPU), and lets them drain on SIGINT/SIGTERM.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::ServerConfig;
use crate::driver::{Driver, DriverConfig, IoMode};
use crate::shard::{Links, Shard, Shared};
use crate::webhook::{WebhookLimits, Webhooks};

/// Listen backlog; the kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("io_uring is unavailable: {0}")]
    IoUringUnavailable(String),
    #[error("shard {shard} failed: {source}")]
    Shard { shard: usize, source: io::Error },
}

/// Binds a listener for one shard. SO_REUSEPORT lets every shard bind the same address and the
/// kernel spreads new connections across them.
pub fn bind_listener(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// SO_REUSEPORT would let a second server bind a port another process already listens on and
/// silently split the connections with it. So first bind a plain socket (no SO_REUSEPORT): it
/// fails with EADDRINUSE when anything listens there. Port 0 is always free.
fn refuse_if_taken(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(e.kind(), "address in use: another process listens on it")
        } else {
            e
        }
    })
}

/// How many shards, and where they run.
#[derive(Debug, Clone)]
pub struct Placement {
    pub shards: usize,
    /// Pin shard i to `cpus[i % cpus.len()]`.
    pub pin: bool,
    /// The CPUs of the process's affinity mask, in order.
    pub cpus: Vec<usize>,
}

impl Placement {
    /// One shard per CPU the process may run on.
    pub fn from_affinity() -> Placement {
        let cpus = allowed_cpus();
        Placement {
            shards: cpus.len().max(1),
            pin: false,
            cpus,
        }
    }
}

/// The CPUs in this process's affinity mask.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Resolves `--io auto` once for all shards, logging one warning with the reason when io_uring
/// is unavailable.
pub fn resolve_io(mode: IoMode) -> Result<IoMode, ServerError> {
    match mode {
        IoMode::Epoll => Ok(IoMode::Epoll),
        IoMode::Uring => {
            crate::driver::probe_uring().map_err(|e| ServerError::IoUringUnavailable(e.0))?;
            Ok(IoMode::Uring)
        }
        IoMode::Auto => match crate::driver::probe_uring() {
            Ok(()) => Ok(IoMode::Uring),
            Err(e) => {
                tracing::warn!("io_uring unavailable, running on epoll: {}", e.0);
                Ok(IoMode::Epoll)
            }
        },
    }
}

/// A running server: call [`Server::wait`] to block until the shards have drained.
pub struct Server {
    pub local_addr: SocketAddr,
    pub driver_name: &'static str,
    pub shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<io::Result<()>>>,
    /// The hub thread, its stop flag, and the webhook sender it feeds.
    hub: Option<HubThread>,
}

type HubThread = (
    std::thread::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicBool>,
    Arc<Webhooks>,
);

/// How long queued webhooks may still be delivered once the server has drained.
const WEBHOOK_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

impl Server {
    /// Binds and starts the shards; returns once every shard is accepting. Setting
    /// `shared.stop` makes them drain and return.
    pub fn start(
        config: ServerConfig,
        placement: &Placement,
        shared: Arc<Shared>,
    ) -> Result<Self, ServerError> {
        let io = resolve_io(config.io)?;
        let config = Arc::new(config);
        refuse_if_taken(config.listen).map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
        let first = bind_listener(config.listen).map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
        // With port 0 the first bind picks the port; the other shards join it.
        let local_addr = first
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(config.listen);
        let mut listeners = vec![first];
        for _ in 1..placement.shards {
            listeners.push(
                bind_listener(local_addr).map_err(|source| ServerError::Listen {
                    addr: local_addr,
                    source,
                })?,
            );
        }
        let mut ports =
            crate::broker::mesh::build(placement.shards, config.limits.mesh_ring_capacity as usize)
                .into_iter();
        let per_app = || {
            (0..config.apps.len())
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect()
        };
        let _ = shared.app_connections.set(per_app());
        let _ = shared.app_channels.set(per_app());
        let webhooks = Arc::new(
            Webhooks::spawn(&config.apps, WebhookLimits::default())
                .map_err(|source| ServerError::Shard { shard: 0, source })?,
        );
        let _ = shared.webhook_counters.set(webhooks.counters());
        let hub_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (hub, links) = crate::hub::build(
            placement.shards,
            config.limits.hub_ring_capacity as usize,
            config.limits.hub_backlog_max as usize,
            Arc::clone(&config.apps),
            Arc::clone(&shared),
            Arc::clone(&webhooks),
            Arc::clone(&hub_stop),
        );
        let _ = shared.hub_counters.set(hub.counters());
        let mut links = links.into_iter();
        let socket_nonce = crate::shard::pusher::socket_id_nonce();
        let hub_thread = {
            let shared = Arc::clone(&shared);
            let (hub_ready_tx, hub_ready_rx) = mpsc::channel::<Result<(), String>>();
            let handle = std::thread::Builder::new()
                .name("ringcast-hub".to_owned())
                .spawn(move || {
                    // Only to sleep and to wake shards: the smallest buffer ring will do.
                    let cfg = DriverConfig {
                        recv_buffer_count: 1,
                        recv_buffer_bytes: 4096,
                        send_iovecs_max: 1,
                    };
                    let driver = match Driver::open(io, &cfg) {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = hub_ready_tx.send(Err(e.0));
                            return;
                        }
                    };
                    match driver.wake_handle() {
                        Ok(fd) => {
                            let _ = shared.hub_waker.set(fd);
                        }
                        Err(e) => tracing::warn!("hub: no wake handle: {e}"),
                    }
                    let _ = hub_ready_tx.send(Ok(()));
                    hub.run(driver);
                })
                .map_err(|source| ServerError::Shard { shard: 0, source })?;
            match hub_ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ServerError::IoUringUnavailable(e)),
                Err(_) => {
                    return Err(ServerError::Shard {
                        shard: 0,
                        source: io::Error::other("hub thread ended at startup"),
                    });
                }
            }
            handle
        };
        let (ready_tx, ready_rx) = mpsc::channel::<Result<&'static str, String>>();
        let mut threads = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let config = Arc::clone(&config);
            let shared_for_shard = Arc::clone(&shared);
            let ready = ready_tx.clone();
            let port = ports
                .next()
                .unwrap_or_else(|| unreachable!("one mesh port per shard"));
            let link = links
                .next()
                .unwrap_or_else(|| unreachable!("one hub link per shard"));
            let cpu = (placement.pin && !placement.cpus.is_empty())
                .then(|| placement.cpus[i % placement.cpus.len()]);
            let handle = std::thread::Builder::new()
                .name(format!("ringcast-shard-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        let mut set = rustix::thread::CpuSet::new();
                        set.set(cpu);
                        if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
                            tracing::warn!(shard = i, cpu, "cannot pin shard: {e}");
                        }
                    }
                    // The ring is created on the thread that submits to it (SINGLE_ISSUER).
                    let limits = config.limits;
                    let cfg = DriverConfig {
                        recv_buffer_count: limits.recv_buffer_count,
                        recv_buffer_bytes: limits.recv_buffer_bytes,
                        send_iovecs_max: limits.send_iovecs_max,
                    };
                    let driver = match Driver::open(io, &cfg) {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = ready.send(Err(e.0));
                            return Ok(());
                        }
                    };
                    match driver.wake_handle() {
                        Ok(fd) => {
                            let _ = shared_for_shard.wakers[i].set(fd);
                        }
                        Err(e) => tracing::warn!(shard = i, "no wake handle: {e}"),
                    }
                    let mut shard = Shard::new(
                        i,
                        driver,
                        listener,
                        config,
                        shared_for_shard,
                        Links {
                            mesh: port,
                            hub: link,
                            socket_nonce,
                        },
                    );
                    let _ = ready.send(Ok(shard.driver_name()));
                    drop(ready);
                    shard.run().map(drop)
                })
                .map_err(|source| ServerError::Shard { shard: i, source })?;
            threads.push(handle);
        }
        drop(ready_tx);
        let mut driver_name = "io_uring";
        for _ in 0..placement.shards {
            match ready_rx.recv() {
                Ok(Ok(name)) => driver_name = name,
                Ok(Err(e)) => {
                    shared
                        .stop
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    // The hub ends on its own once told (within its idle poll).
                    hub_stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(ServerError::IoUringUnavailable(e));
                }
                Err(_) => break,
            }
        }
        let _ = shared.driver_name.set(driver_name);
        Ok(Self {
            local_addr,
            driver_name,
            shared,
            threads,
            hub: Some((hub_thread, hub_stop, webhooks)),
        })
    }

    /// Blocks until every shard has stopped, then stops the hub and flushes webhooks.
    pub fn wait(mut self) -> Result<(), ServerError> {
        let result = self.join_shards();
        if let Some((thread, stop, webhooks)) = self.hub.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = thread.join();
            if let Ok(webhooks) = Arc::try_unwrap(webhooks) {
                webhooks.shutdown(WEBHOOK_FLUSH);
            }
        }
        result
    }

    fn join_shards(&mut self) -> Result<(), ServerError> {
        for (shard, t) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(source)) => return Err(ServerError::Shard { shard, source }),
                Err(_) => {
                    return Err(ServerError::Shard {
                        shard,
                        source: io::Error::other("shard thread panicked"),
                    });
                }
            }
        }
        Ok(())
    }
}
