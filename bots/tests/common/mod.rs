//! What the binary's tests share.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

/// Starts `cmd` with its stdin piped and its stdout lines sent to the receiver (stderr
/// dropped).
#[allow(dead_code)] // not every test file starts the binary this way
pub(crate) fn spawn_piped(
    cmd: &mut Command,
) -> (Child, Option<ChildStdin>, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start opsbot");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, stdin, lines)
}

/// The `opsbot` binary, with a state directory of its own under the tests' scratch folder
/// (never the home of whoever runs the tests; the folder is emptied once per test process).
#[allow(dead_code)] // not every test file starts the binary this way
pub(crate) fn opsbot() -> Command {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    static FRESH: std::sync::Once = std::sync::Once::new();
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-state");
    FRESH.call_once(|| {
        let _ = std::fs::remove_dir_all(&base);
    });
    let dir = base.join(N.fetch_add(1, Ordering::Relaxed).to_string());
    let mut c = Command::new(env!("CARGO_BIN_EXE_opsbot"));
    c.env("XDG_STATE_HOME", dir).env_remove("STATE_DIRECTORY");
    c
}
