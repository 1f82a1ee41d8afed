//! Memory of an idle bot: the `opsbot` binary with all built-in handlers on the console,
//! answered once, then left idle; reports peak and current resident set size from
//! `/proc/PID/status`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    // The state store (the healing log) in a folder of its own, not the home directory.
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_opsbot"))
        .env("RUST_LOG", "warn")
        .env("XDG_STATE_HOME", state.path())
        .env_remove("STATE_DIRECTORY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start opsbot");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for cmd in ["!help", "!status", "!whereareyou", "!echo ready"] {
        writeln!(stdin, "{cmd}").unwrap();
    }
    stdin.flush().unwrap();
    let mut line = String::new();
    while line.trim_end() != "ready" {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "opsbot ended early"
        );
    }
    std::thread::sleep(if quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(3)
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let (hwm, rss, threads) = (
        kib(&status, "VmHWM:"),
        kib(&status, "VmRSS:"),
        kib(&status, "Threads:"),
    );
    println!(
        "idle bot (console, built-in handlers): peak RSS {:.1} MiB, RSS {:.1} MiB, {threads} threads",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    drop(stdin);
    let _ = child.wait();
}
