//! The Pusher Channels protocol against the real libraries: runs the Node suite in
//! `tests/pusher-js/` (pusher-js, laravel-echo and the `pusher` server SDK, pinned by its
//! package-lock.json) against the `ringcast` binary of this build.
//!
//! Without `node` or `npm` the test prints a loud `SKIPPED:` line and passes, unless
//! `RINGCAST_CI` is set, where that is a failure (STYLE.md §6). It runs `npm ci` itself when
//! `node_modules` is missing or older than the lock file, streams the suite's output, and kills
//! the whole process group (node and every server it started) after [`SUITE_TIMEOUT`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// The whole Node suite; each of its waits has its own deadline of a few seconds.
const SUITE_TIMEOUT: Duration = Duration::from_secs(180);
/// `npm ci` from the registry (or npm's cache).
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(300);
/// The oldest Node whose `node:test` runner the suite uses (Debian 12 ships 18.19).
const NODE_MAJOR_MIN: u32 = 18;

#[test]
fn pusher_js_laravel_echo_and_the_pusher_sdk_pass_against_ringcast() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pusher-js");
    let node = match tool_version("node") {
        Ok(version) if node_major(&version).is_some_and(|m| m >= NODE_MAJOR_MIN) => version,
        Ok(version) => return skip(&format!("node {version} is older than {NODE_MAJOR_MIN}")),
        Err(why) => return skip(&why),
    };
    let npm = match tool_version("npm") {
        Ok(version) => version,
        Err(why) => return skip(&why),
    };
    loud(&format!(
        "pusher-js suite: node {node}, npm {npm}, in {}",
        dir.display()
    ));

    ensure_node_modules(&dir);

    let mut args: Vec<String> = vec!["--test".into(), "--test-reporter=spec".into()];
    // Flags newer than Node 18 are passed only where this node has them: one file at a time
    // (each starts its own servers), and exit once the tests end even if a handle leaked.
    let help = Command::new("node")
        .arg("--help")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let help = String::from_utf8_lossy(&help);
    for flag in ["--test-concurrency=1", "--test-force-exit"] {
        let name = flag.split('=').next().unwrap_or(flag);
        if help.contains(name) {
            args.push(flag.to_owned());
        }
    }
    args.extend(test_files(&dir));

    loud(&format!("pusher-js suite: node {}", args.join(" ")));
    let mut command = Command::new("node");
    command
        .args(&args)
        .current_dir(&dir)
        .env("RINGCAST_BIN", env!("CARGO_BIN_EXE_ringcast"));
    let run = run_streamed(command, SUITE_TIMEOUT);

    // The spec reporter lists each failure twice (as it happens, then in a summary).
    let mut failures: Vec<&str> = Vec::new();
    for line in run.output.iter().map(|l| l.trim()) {
        let new = line.starts_with('✖') && line != "✖ failing tests:" && !failures.contains(&line);
        if new && failures.len() < 60 {
            failures.push(line);
        }
    }
    let Some(status) = run.status else {
        panic!(
            "the pusher-js suite did not finish within {SUITE_TIMEOUT:?} and was killed; \
             failed so far:\n{}",
            failures.join("\n")
        );
    };
    assert!(
        status.success(),
        "the pusher-js suite failed ({status}); failing tests (full output above):\n{}",
        failures.join("\n")
    );
    assert!(
        !run.leaked,
        "the pusher-js suite left processes running after it exited (killed now)"
    );
}

/// Prints `why` as a loud skip, or panics when `RINGCAST_CI` is set.
fn skip(why: &str) {
    if std::env::var_os("RINGCAST_CI").is_some_and(|v| !v.is_empty()) {
        panic!("RINGCAST_CI is set, so this is a failure: the pusher-js suite cannot run: {why}");
    }
    loud(&format!(
        "SKIPPED: the pusher-js suite (tests/pusher-js) cannot run: {why}. Install nodejs and \
         npm to run it; under RINGCAST_CI this is a failure."
    ));
}

/// Writes one line straight to the process's stderr, past the test harness's output capture,
/// so it shows even when the test passes.
fn loud(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

/// `TOOL --version`, trimmed, or why it cannot be run.
fn tool_version(tool: &str) -> Result<String, String> {
    match Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        Ok(out) => Err(format!("`{tool} --version` failed: {}", out.status)),
        Err(e) => Err(format!("`{tool}` not found on PATH ({e})")),
    }
}

/// 20 from `v20.20.2`.
fn node_major(version: &str) -> Option<u32> {
    version
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Runs `npm ci` when `node_modules` is missing or older than `package-lock.json` (npm writes
/// `node_modules/.package-lock.json` on every install, so its time is the install's time).
fn ensure_node_modules(dir: &Path) {
    let lock = modified(&dir.join("package-lock.json")).expect("tests/pusher-js/package-lock.json");
    let installed = modified(&dir.join("node_modules/.package-lock.json"));
    if installed.is_some_and(|installed| installed >= lock) {
        return;
    }
    loud("pusher-js suite: npm ci --no-audit --no-fund");
    let mut command = Command::new("npm");
    command
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir);
    let status = run_streamed(command, NPM_CI_TIMEOUT).status;
    match status {
        Some(status) => assert!(status.success(), "npm ci failed ({status}); output above"),
        None => panic!("npm ci did not finish within {NPM_CI_TIMEOUT:?} and was killed"),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Every `*.test.mjs` in `dir`, sorted, as absolute paths.
fn test_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read tests/pusher-js")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.mjs in {}", dir.display());
    files
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// What [`run_streamed`] saw.
struct Run {
    /// None: killed at the time limit.
    status: Option<ExitStatus>,
    /// Every line of stdout and stderr.
    output: Vec<String>,
    /// Something of the process group was still alive after the process exited.
    leaked: bool,
}

/// Runs `command` in a process group of its own, copying its output to stderr line by line as
/// it comes; past `limit` the whole group (the command and everything it started, e.g. the
/// servers of the suite) is killed.
fn run_streamed(mut command: Command, limit: Duration) -> Run {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let output = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        stream_lines(
            child.stdout.take().expect("piped stdout"),
            Arc::clone(&output),
        ),
        stream_lines(
            child.stderr.take().expect("piped stderr"),
            Arc::clone(&output),
        ),
    ];
    let status = wait_or_kill_group(&mut child, limit);
    for reader in readers {
        reader.join().expect("output reader");
    }
    let leaked = kill_leftovers(child.id());
    let output = std::mem::take(&mut *output.lock().unwrap());
    Run {
        status,
        output,
        leaked,
    }
}

/// Copies each line of `pipe` to stderr as it comes (past the output capture) and keeps it.
fn stream_lines(pipe: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            loud(&format!("pusher-js| {line}"));
            sink.lock().unwrap().push(line);
        }
    })
}

/// Waits for `child` at most `limit`; past it, kills its whole process group and returns None.
fn wait_or_kill_group(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            kill_group(child.id(), "KILL");
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After the suite's process exited: true if anything of its group (a server it failed to
/// stop) was still alive 2 s later, in which case the group is killed.
fn kill_leftovers(pgid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if !kill_group(pgid, "0") {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(pgid, "KILL");
    true
}

/// `kill -SIGNAL -- -PGID` through kill(1), so the test needs no unsafe code; true if the group
/// had a process to signal.
fn kill_group(pgid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
