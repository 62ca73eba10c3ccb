//! `--io auto` for real: the server runs under a seccomp filter that makes `io_uring_setup` fail
//! with EPERM (as Docker's default profile does). Auto must fall back to epoll with one warning
//! that says why, and `--io uring` must exit 69 saying io_uring is unavailable.
//!
//! The filter is installed without `unsafe` (the tidy rule keeps `unsafe` out of tests/): the
//! test binary re-runs itself as a trampoline (`seccomp_exec_trampoline`), which installs the
//! filter on its own thread with `seccompiler::apply_filter` and then execs `ringcast`; seccomp
//! filters and no_new_privs survive execve, so the server starts filtered.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use common::driver::{BIN, Driver, EXIT_UNAVAILABLE, Ringcast, remove_ringcast_env};
use common::{Listener, within};
use futures_util::{SinkExt, StreamExt};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
use tokio::process::Command;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

/// Set (to the server's arguments, one per line) when this binary runs as the trampoline.
const TRAMPOLINE_ARGS: &str = "RINGCAST_SECCOMP_TEST_EXEC_ARGS";
const TRAMPOLINE_TEST: &str = "seccomp_exec_trampoline";

/// Not a test of its own: when [`TRAMPOLINE_ARGS`] is set, installs the filter and execs
/// `ringcast` with those arguments (never returning); otherwise it does nothing.
#[test]
fn seccomp_exec_trampoline() {
    let Some(args) = std::env::var_os(TRAMPOLINE_ARGS) else {
        return;
    };
    let args: Vec<String> = args.to_string_lossy().lines().map(str::to_string).collect();
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        [(libc::SYS_io_uring_setup, Vec::new())]
            .into_iter()
            .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        std::env::consts::ARCH
            .try_into()
            .expect("seccompiler supports this arch"),
    )
    .expect("build the seccomp filter");
    let program: BpfProgram = filter.try_into().expect("compile the seccomp filter");
    // Sets no_new_privs first, then installs the filter on this thread, which does the exec.
    seccompiler::apply_filter(&program).expect("install the seccomp filter");
    let err = std::process::Command::new(BIN)
        .args(&args)
        .env_remove(TRAMPOLINE_ARGS)
        .exec();
    panic!("exec {BIN}: {err}");
}

/// `ringcast ARGS` under the filter, via the trampoline; no `RINGCAST_*` setting inherited.
fn filtered_command(args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("current test binary");
    let mut command = Command::new(exe);
    command.args([
        TRAMPOLINE_TEST,
        "--exact",
        "--nocapture",
        "--test-threads",
        "1",
        "-q",
    ]);
    remove_ringcast_env(&mut command, None);
    command
        .env(TRAMPOLINE_ARGS, args.join("\n"))
        .env("RINGCAST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_epoll_when_seccomp_denies_io_uring() {
    within(Duration::from_secs(30), async {
        let command = filtered_command(&[
            "serve",
            "--io",
            "auto",
            "--echo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        // Auto must end up on epoll: Ringcast::stats checks that /stats says so.
        let mut server = Ringcast::launch(Driver::Epoll, command)
            .await
            .expect("--io auto under seccomp printed no listening line");

        // One warning, saying it runs on epoll and why.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = server.log();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("running on epoll"))
            .collect();
        assert_eq!(
            warnings.len(),
            1,
            "expected one 'running on epoll' line; stderr:\n{log}"
        );
        let warning = warnings[0];
        eprintln!("warning under seccomp: {warning}");
        assert!(warning.contains("WARN"), "not a warning: {warning}");
        assert!(
            warning.contains("EPERM") || warning.contains("seccomp"),
            "the warning does not say EPERM or seccomp: {warning}"
        );

        let stats = server.stats().await;
        assert_eq!(stats["driver"], "epoll", "{stats}");

        let (mut ws, _) = connect_async(server.echo_url())
            .await
            .expect("WebSocket to the filtered server");
        ws.send(Message::text("through epoll")).await.expect("send");
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "through epoll"),
            other => panic!("echo under seccomp: {other:?}; stderr:\n{}", server.log()),
        }
        server.assert_running();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_exits_69_when_seccomp_denies_io_uring() {
    within(Duration::from_secs(30), async {
        let mut command = filtered_command(&[
            "serve",
            "--io",
            "uring",
            "--echo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        let output = tokio::time::timeout(Duration::from_secs(10), command.output())
            .await
            .expect("--io uring under seccomp did not exit within 10 s")
            .expect("run the trampoline");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(EXIT_UNAVAILABLE),
            "exit status {}; stdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        );
        assert!(
            stderr.contains("io_uring"),
            "the message does not mention io_uring:\n{stderr}"
        );
        assert!(
            !stdout.contains("ringcast: listening on"),
            "it listened before exiting:\n{stdout}"
        );
    })
    .await
}
