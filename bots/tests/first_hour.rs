//! What a newcomer meets in the first hour, against the real `opsbot` binary (and a real
//! ngircd where IRC is involved): words where there used to be silence.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{Kind, Server};

/// Waits for a line of `lines` that satisfies `want`, for up to `within`.
fn line_where(
    lines: &mpsc::Receiver<String>,
    within: Duration,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if want(&l) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no such line within {within:?}; got:\n{}", seen.join("\n")),
        }
    }
}

/// `tls = true` against a plain-text IRC server (a real ngircd): each attempt is announced at
/// info, the failure says what to try, and Ctrl-C (SIGINT) while the bot waits to reconnect
/// stops it at once: there is nothing to drain.
#[test]
fn tls_against_a_plain_text_server_says_what_to_try_and_stops_at_once() {
    let server = Server::start(Kind::Ngircd);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bots.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\npath = \"{}\"\n[[bot]]\nname = \"ops\"\n[bot.transport]\nkind = \"irc\"\n\
             server = \"127.0.0.1\"\nport = {}\ntls = true\nnick = \"opsbot\"\nchannels = [\"#ops\"]\n",
            dir.path().join("state.redb").display(),
            server.port
        ),
    )
    .unwrap();
    let mut child = crate::common::opsbot()
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let port = server.port;
    line_where(&lines, Duration::from_secs(10), |l| {
        l.contains(&format!("connecting to 127.0.0.1:{port} with TLS"))
    });
    let failed = line_where(&lines, Duration::from_secs(30), |l| l.contains("reconnect"));
    assert!(
        failed.contains("the server may not speak TLS on this port: set tls = false"),
        "{failed}"
    );
    // A second attempt is announced too.
    line_where(&lines, Duration::from_secs(10), |l| {
        l.contains(&format!("connecting to 127.0.0.1:{port} with TLS"))
    });
    let asked = Instant::now();
    // The standard library sends no signals; `kill` does.
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "opsbot did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = asked.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(3), "stopping took {took:?}");
}
