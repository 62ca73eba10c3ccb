//! Servers started with an explicit driver (`--io uring` / `--io epoll`) and an admin listener,
//! as tests/engine.rs, tests/fanout.rs and tests/seccomp.rs use them: the admin and listening
//! lines, the io_uring skip (a failure when `RINGCAST_CI` is set, see [`super::skips_fail`]),
//! `/stats` and plain admin GETs. Like the rest of the harness it binds only 127.0.0.1 port 0
//! and every wait has a deadline.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::{Listener, capture_stderr, exit_within, log_tail, skips_fail};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ringcast");
/// Time the server gets to print its listening line.
pub const STARTUP: Duration = Duration::from_secs(10);
pub const ADMIN_PREFIX: &str = "ringcast: admin on ";
pub const LISTEN_PREFIX: &str = super::LISTENING_PREFIX;
/// sysexits.h EX_USAGE and EX_UNAVAILABLE, as `ringcast` uses them (69: `--io uring` where
/// io_uring does not work).
pub const EXIT_USAGE: i32 = 64;
pub const EXIT_UNAVAILABLE: i32 = 69;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Uring,
    Epoll,
}

impl Driver {
    pub fn flag(self) -> &'static str {
        match self {
            Driver::Uring => "uring",
            Driver::Epoll => "epoll",
        }
    }

    /// The name `/stats` reports.
    pub fn stats_name(self) -> &'static str {
        match self {
            Driver::Uring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// Defines `mod $name { async fn uring(); async fn epoll(); }`, each running `$name(driver)`;
/// the test file must have `Driver` in scope at its root.
#[allow(unused_macros)]
macro_rules! on_both_drivers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn uring() {
                super::$name(super::Driver::Uring).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn epoll() {
                super::$name(super::Driver::Epoll).await
            }
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use on_both_drivers;

/// Removes every `RINGCAST_*` variable the test process has from `command`'s environment, but
/// `keep` (e.g. `Some("RINGCAST_LOG")`), so the server sees only the settings the test passes.
pub fn remove_ringcast_env(command: &mut Command, keep: Option<&str>) {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("RINGCAST_") && Some(name.as_ref()) != keep {
            command.env_remove(&key);
        }
    }
}

/// The test process and the servers it starts get the hard open-file limit as their soft one:
/// thousands of connections need twice as many descriptors on loopback, and tests run in
/// parallel.
pub fn raise_nofile() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let raised = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                eprintln!("cannot raise RLIMIT_NOFILE: {e}");
            }
        }
    });
}

/// `[wrapper..] ringcast serve --io DRIVER --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
/// ARGS`, with no `RINGCAST_*` variable inherited from the test's environment.
pub fn serve_command(wrapper: &[&str], driver: Option<Driver>, args: &[&str]) -> Command {
    raise_nofile();
    let mut argv: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
    argv.push(BIN.to_string());
    argv.push("serve".into());
    if let Some(d) = driver {
        argv.extend(["--io".into(), d.flag().into()]);
    }
    argv.extend(
        ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
            .iter()
            .map(|s| s.to_string()),
    );
    argv.extend(args.iter().map(|s| s.to_string()));
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    remove_ringcast_env(&mut command, None);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A running `ringcast serve` with its admin listener. Dropping it kills the process.
pub struct Ringcast {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub driver: Driver,
    stderr: Arc<Mutex<String>>,
}

impl Ringcast {
    /// Starts `ringcast serve` with `driver` and `args`; None if the driver is unavailable and
    /// the test should skip (see [`skips_fail`]).
    pub async fn start(driver: Driver, args: &[&str]) -> Option<Ringcast> {
        Ringcast::launch(driver, serve_command(&[], Some(driver), args)).await
    }

    /// Spawns `command` (a `ringcast serve`, maybe behind a wrapper that execs it) and waits for
    /// its admin and listening lines. `driver` is the driver the server must end up on (checked
    /// by [`Ringcast::stats`]); a `--io uring` server that exits 69 is a skip.
    pub async fn launch(driver: Driver, mut command: Command) -> Option<Ringcast> {
        let mut child = command.spawn().expect("spawn ringcast");
        let pid = child.id().expect("child pid");
        let stderr = capture_stderr(&mut child);
        let mut out_lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let deadline = tokio::time::Instant::now() + STARTUP;
        let mut admin = None;
        let addr = loop {
            match tokio::time::timeout_at(deadline, out_lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    if let Some(a) = after(&line, ADMIN_PREFIX) {
                        admin = Some(a);
                    }
                    if let Some(a) = after(&line, LISTEN_PREFIX) {
                        break a;
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
                        .await
                        .expect("ringcast closed stdout but did not exit")
                        .expect("wait");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let log = stderr.lock().unwrap().clone();
                    if driver == Driver::Uring && status.code() == Some(EXIT_UNAVAILABLE) {
                        let why = format!("--io uring exited 69 (io_uring unavailable): {log}");
                        if skips_fail() {
                            panic!("RINGCAST_CI is set, so this is a failure: {why}");
                        }
                        eprintln!("SKIPPED (uring): {why}");
                        return None;
                    }
                    panic!("ringcast exited before listening ({status}); stderr:\n{log}");
                }
                Err(_) => panic!(
                    "ringcast printed no listening line within {STARTUP:?}; stderr:\n{}",
                    stderr.lock().unwrap()
                ),
            }
        };
        let admin = admin.expect("the admin line comes before the listening line");
        assert!(addr.ip().is_loopback() && admin.ip().is_loopback());
        tokio::spawn(async move { while let Ok(Some(_)) = out_lines.next_line().await {} });
        Some(Ringcast {
            child,
            pid,
            addr,
            admin,
            driver,
            stderr,
        })
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `GET /stats` on the admin listener, checked to name this server's driver.
    pub async fn stats(&self) -> serde_json::Value {
        let (status, body) = http_get(self.admin, "/stats")
            .await
            .unwrap_or_else(|e| panic!("GET /stats: {e}; stderr:\n{}", self.log()));
        assert_eq!(status, 200, "GET /stats: {body}");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/stats is not JSON ({e}): {body}"));
        assert_eq!(
            json["driver"],
            self.driver.stats_name(),
            "/stats names the driver the server was started with: {json}"
        );
        json
    }

    /// Polls `/stats` until `done` holds; panics with the last snapshot after `limit`.
    pub async fn stats_until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let json = self.stats().await;
            if done(&json) {
                return json;
            }
            assert!(
                Instant::now() < deadline,
                "/stats never showed {what} within {limit:?}; last: {json}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM to this server (a PID this test started).
    pub fn sigterm(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid as i32).expect("nonzero pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill -TERM");
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        exit_within(&mut self.child, limit, &self.stderr).await
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        match self.child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => panic!("ringcast exited with {status}; stderr:\n{}", self.log()),
            Err(e) => panic!("try_wait: {e}"),
        }
    }
}

impl Listener for Ringcast {
    fn listen_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Ringcast {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = log_tail(&self.log());
            eprintln!(
                "--- ringcast ({:?}) stderr, last 40 lines ---\n{tail}\n---",
                self.driver
            );
        }
        // kill_on_drop does the rest.
    }
}

/// The address after `prefix` in `line`, if `line` has it.
pub fn after(line: &str, prefix: &str) -> Option<SocketAddr> {
    let at = line.find(prefix)?;
    Some(
        line[at + prefix.len()..]
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}")),
    )
}

/// One HTTP/1.1 GET with `Connection: close`; the whole response as text.
async fn get_text(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 5 s"))??;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// The status code of a response's text.
fn status_of(text: &str) -> std::io::Result<u16> {
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {text:?}")))
}

/// One HTTP/1.1 GET with `Connection: close`; (status, body), the body empty if there is none.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let text = get_text(addr, path).await?;
    let status = status_of(&text)?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// One admin GET with `Connection: close`: (status, Content-Type, body); a response without a
/// complete head is an error.
pub async fn admin_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    let text = get_text(addr, path).await?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response head in {text:?}")))?;
    let status = status_of(head)?;
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
        .map_or(String::new(), |(_, v)| v.trim().to_string());
    Ok((status, content_type, body.to_string()))
}

/// `/stats` `total.KEY`.
pub fn total(stats: &serde_json::Value, key: &str) -> u64 {
    stats["total"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("/stats total has no {key}: {stats}"))
}
