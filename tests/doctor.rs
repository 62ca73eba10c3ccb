//! `ringcast doctor` from the command line: exit codes, the JSON shape, a fake proc root, and
//! a smoke run on the real host. The checks themselves are unit-tested in `src/ops/doctor.rs`.

use std::process::Command;

fn doctor(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .arg("doctor")
        .args(args)
        .output()
        .expect("run ringcast doctor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_root(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ringcast-doctor-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sys/fs")).unwrap();
    dir
}

#[test]
fn zero_connections_is_a_usage_error_with_exit_64() {
    let (code, _, err) = doctor(&["--connections", "0"]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn bad_setting_is_a_usage_error_with_exit_64() {
    let (code, _, err) = doctor(&["--close-timeout-ms", "0"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("close_timeout_ms"), "{err}");
}

#[test]
fn json_on_the_real_host_has_checks_and_a_budget_and_matches_the_exit_code() {
    let (code, out, err) = doctor(&["--json", "--connections", "1000"]);
    assert!((0..=2).contains(&code), "exit {code}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    let checks = v["checks"].as_array().expect("checks array");
    assert!(checks.len() >= 10, "{out}");
    for c in checks {
        for key in ["name", "current", "needed", "status", "fix"] {
            assert!(c.get(key).is_some(), "check without {key}: {c}");
        }
    }
    let worst = checks
        .iter()
        .map(|c| match c["status"].as_str().unwrap() {
            "OK" => 0,
            "WARN" => 1,
            "FAIL" => 2,
            other => panic!("status {other}"),
        })
        .max()
        .unwrap();
    assert_eq!(code, worst, "exit code follows the worst check");
    assert!(v["budget"]["total_bytes"].as_u64().unwrap() > 0, "{out}");
}

#[test]
fn a_tiny_nr_open_in_a_fake_proc_root_fails_with_its_fix_line() {
    let root = temp_root("nr-open");
    std::fs::write(root.join("sys/fs/nr_open"), "1024\n").unwrap();
    let (code, out, err) = doctor(&[
        "--connections",
        "100000",
        "--proc-root",
        root.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("fs.nr_open"))
        .expect("an fs.nr_open row");
    assert!(row.starts_with("FAIL"), "{row}");
    assert!(row.contains("sysctl -w fs.nr_open="), "{row}");
    std::fs::remove_dir_all(root).unwrap();
}
