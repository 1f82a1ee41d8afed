//! The `opsbot` binary as a user meets it: a console bot on pipes, config checks, signals.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any wait on the binary may take before the test fails (and the process is killed):
/// a broken signal path or a hang fails the test, it never hangs CI.
const PATIENCE: Duration = Duration::from_secs(30);

/// Waits for `child` to exit within [`PATIENCE`]; kills it and fails the test otherwise.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("opsbot did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `examples/selfheal.toml` as a user runs it, with its status API moved to a free port (the
/// tests run side by side).
fn selfheal(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(examples().join("selfheal.toml")).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:9120\""));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.join("selfheal.toml");
    let text = text.replace("127.0.0.1:9120", &format!("127.0.0.1:{port}"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Asserts that `opsbot check` passes `path` with the environment variables `env` set.
fn checks_clean(path: &Path, env: &[(&str, &str)]) {
    let out = crate::common::opsbot()
        .args(["check", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", path.display());
    assert!(!stderr.contains("warning"), "{}: {stderr}", path.display());
}

/// A running `opsbot` whose stdout lines arrive on a channel.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn start(args: &[&str]) -> Self {
        let (child, stdin, lines) =
            crate::common::spawn_piped(crate::common::opsbot().args(args).env("RUST_LOG", "warn"));
        Self {
            child,
            stdin,
            lines,
        }
    }

    fn type_line(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn next(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("opsbot answered within 20 s")
    }

    fn until(&self, last: impl Fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self.next();
            let done = last(&l);
            out.push(l);
            if done {
                return out;
            }
        }
    }

    /// The rest of the output until stdout closes, within [`PATIENCE`].
    fn rest(&self) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut rest = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => rest.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => return rest,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("opsbot kept its stdout open past {PATIENCE:?} (said {rest:?})")
                }
            }
        }
    }

    /// Closes stdin and returns the rest of the output and the exit status.
    fn finish(mut self) -> (Vec<String>, std::process::ExitStatus) {
        drop(self.stdin.take());
        let rest = self.rest();
        (rest, wait_exit(&mut self.child))
    }
}

#[test]
fn with_no_arguments_it_is_a_console_bot_with_the_builtins() {
    let mut s = Session::start(&[]);
    s.type_line(b"!help");
    let help = s.until(|l| l.starts_with("!help <command>"));
    let names: Vec<&str> = help
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "!echo",
            "!heal",
            "!help",
            "!status",
            "!whereareyou",
            "!whoami",
            "!help"
        ]
    );
    s.type_line(b"status");
    let status = s.until(|l| l.starts_with("outbox:"));
    // The health summary first, as the status API shows it.
    assert!(
        status[0].starts_with("healthy · ") && status[0].ends_with(" subsystems healthy"),
        "{status:?}"
    );
    assert!(
        status[1].starts_with("opsbot 0.1.0 · bot opsbot · up "),
        "{status:?}"
    );
    assert!(
        status
            .iter()
            .any(|l| l.starts_with("transport console: connected")),
        "{status:?}"
    );
    s.type_line(b"!whereareyou");
    assert!(s.next().starts_with("I am on "));
    let (rest, code) = s.finish();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(code.success());
}

#[test]
fn selfheal_example_survives_boom() {
    let dir = tempfile::tempdir().unwrap();
    let config = selfheal(dir.path());
    let mut s = Session::start(&["run", "--config", config.to_str().unwrap()]);
    s.type_line(b"!boom");
    assert_eq!(s.next(), "sorry, !boom crashed; it is being restarted");
    s.type_line(b"!echo ok");
    assert_eq!(s.next(), "ok");
    // The restart takes its backoff; ask until the report shows it done.
    let boom = loop {
        s.type_line(b"!status");
        let report = s.until(|l| l.starts_with("outbox:"));
        let boom = report
            .iter()
            .find(|l| l.starts_with("handler boom"))
            .cloned()
            .unwrap();
        if boom.starts_with("handler boom: running") {
            break boom;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(boom.contains(", 1 restart, last error "), "{boom}");
    let (_, code) = s.finish();
    assert!(code.success());
}

#[test]
fn end_of_input_still_delivers_every_line_already_said() {
    let dir = tempfile::tempdir().unwrap();
    let config = selfheal(dir.path());
    let mut s = Session::start(&["run", "--config", config.to_str().unwrap()]);
    s.type_line(b"!lines 100");
    assert_eq!(s.next(), "line 1 of 100");
    // Paced at 20 lines a second, most of the answer is still queued when input ends; it takes
    // about 5 s of the 10 s shutdown deadline.
    let (rest, code) = s.finish();
    let expected: Vec<String> = (2..=100).map(|i| format!("line {i} of 100")).collect();
    assert_eq!(rest, expected);
    assert!(code.success());
}

#[test]
fn bad_bytes_and_huge_lines_do_not_hurt_the_console() {
    let mut s = Session::start(&[]);
    s.type_line(b"!echo caf\xe9 \xff\xfe");
    assert_eq!(s.next(), "caf\u{fffd} \u{fffd}\u{fffd}");
    let mut huge = b"!echo ".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 100_000));
    s.type_line(&huge);
    let mut got = 0;
    while got < 16 * 1024 - 6 {
        let l = s.next();
        assert!(
            l.len() <= 4096 && l.bytes().all(|b| b == b'x'),
            "{} bytes",
            l.len()
        );
        got += l.len();
    }
    s.type_line(b"!echo alive");
    assert_eq!(s.next(), "alive");
    let (_, code) = s.finish();
    assert!(code.success());
}

/// SIGTERM drains: an answer being paced out when the signal comes still arrives whole before
/// a clean exit.
#[test]
fn sigterm_stops_it_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let config = selfheal(dir.path());
    let mut s = Session::start(&["run", "--config", config.to_str().unwrap()]);
    s.type_line(b"!lines 100");
    assert_eq!(s.next(), "line 1 of 100");
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let rest = s.rest();
    let expected: Vec<String> = (2..=100).map(|i| format!("line {i} of 100")).collect();
    assert_eq!(rest, expected);
    let status = wait_exit(&mut s.child);
    assert!(status.success(), "{status:?}");
}

#[test]
fn logs_to_a_pipe_are_plain_text() {
    let mut child = crate::common::opsbot()
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"!echo x\n").unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
        log
    });
    assert!(wait_exit(&mut child).success());
    let log = reader.join().unwrap();
    assert!(log.contains("bot started"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "escape codes in a piped log: {log:?}"
    );
}

/// One `!boom` printed the panic twice at ERROR, recoveries at WARN, actix's own chatter and a
/// Rust debug value (`Some(Rate { .. })`). Now: the panic once, the restart at info, nothing
/// of actix's or of Rust's debug formatting; and at a terminal the console's log keeps to
/// warnings by default, which the banner says.
#[test]
fn the_console_log_says_each_thing_once_and_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let config = selfheal(dir.path());
    let mut child = crate::common::opsbot()
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"!boom\n!echo after\n")
        .unwrap();
    let mut log = String::new();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        stderr.read_to_string(&mut log).unwrap();
        log
    });
    assert!(wait_exit(&mut child).success());
    let log = reader.join().unwrap();
    let panics: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("crashed on purpose"))
        .collect();
    assert_eq!(panics.len(), 1, "{log}");
    assert!(
        panics[0].contains(" ERROR ") && panics[0].contains("handler=\"boom\""),
        "{log}"
    );
    let restart = log
        .lines()
        .find(|l| l.contains("action=\"restart\""))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(restart.contains(" INFO "), "{restart}");
    for noise in ["Actix runtime", "actix_server", "Some(", "Rate {", "None,"] {
        assert!(!log.contains(noise), "`{noise}` in\n{log}");
    }

    // At a terminal (a pseudo-terminal by `script`), warnings only, and the banner says so.
    let cmd = format!(
        "printf '!boom\\n' | {} run --config {}",
        env!("CARGO_BIN_EXE_opsbot"),
        config.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("XDG_STATE_HOME", dir.path())
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("the log shows warnings here (more: RUST_LOG=info)"),
        "{shown}"
    );
    assert!(shown.contains("sorry, !boom crashed"), "{shown}");
    assert!(!shown.contains(" INFO "), "{shown}");
    assert_eq!(shown.matches("crashed on purpose").count(), 1, "{shown}");
}

fn check(text: &str) -> (bool, String, String) {
    check_env(text, &[])
}

/// [`check`] with these environment variables set.
fn check_env(text: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bots.toml");
    std::fs::write(&path, text).unwrap();
    let out = crate::common::opsbot()
        .args(["check", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "bots.toml");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

#[test]
fn check_names_the_file_the_key_and_the_problem() {
    let (ok, _, err) = check(
        "[[bot]]\nname = \"ops\"\n[bot.outbox]\nrat = 3\n[bot.transport]\nkind = \"console\"\n",
    );
    assert!(!ok);
    assert!(
        err.starts_with("bots.toml:4: `bot[0].outbox.rat`: unknown field `rat`, expected one of")
            && err.contains("(hint: did you mean `rate`?)"),
        "{err}"
    );

    let (ok, _, err) = check(
        "[[bot]]\nname = \"ops\"\nhandlers = [\"bom\", \"echo\"]\n[bot.transport]\nkind = \"telex\"\n",
    );
    assert!(!ok);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    // In the file's order.
    assert!(lines[0].starts_with("bots.toml:3: `bot[0].handlers`: unknown handler `bom` (hint: handlers that can be enabled: boom, lines, dns, links, engine)"), "{err}");
    assert!(lines[1].contains("`echo` is built in"), "{err}");
    assert!(
        lines[2]
            .starts_with("bots.toml:5: `bot[0].transport.kind`: unknown transport kind `telex`"),
        "{err}"
    );

    let (ok, _, err) = check("[[bot]]\nname = \"ops\"\n[bot.transport\n");
    assert!(!ok);
    assert!(err.starts_with("bots.toml:3: "), "{err}");

    // A config nested 100,000 levels deep (an array, and inline tables) is a clear error, not a
    // crash of the parser.
    for deep in [
        format!("x = {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        format!("x = {}1{}\n", "{a = ".repeat(100_000), "}".repeat(100_000)),
    ] {
        let (ok, _, err) = check(&deep);
        assert!(!ok);
        assert!(
            err.starts_with("bots.toml:1: "),
            "{}",
            &err[..err.len().min(300)]
        );
    }

    // `run` refuses the same file before connecting anywhere.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[bot]]\nname = \"ops\"\nprefix = \"\"\n[bot.transport]\nkind = \"console\"\n",
    )
    .unwrap();
    let out = crate::common::opsbot()
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("`bot[0].prefix`: `` cannot be a command prefix")
    );
}

/// The config of issue "2d of 6": `check` used to accept it, and `run` then answered nothing
/// at all and exited 0 at the end of input. Now `check` and `run` refuse it, naming the key.
/// A bot without `[bot.transport]` became a console bot; under systemd (stdin from
/// /dev/null) `run` started, stopped after 3 ms, exited 0 and said nothing: a quiet restart
/// loop. The file must name the transport; a console bot whose input ends says so; `check`
/// warns about a console bot under a service manager.
#[test]
fn a_bot_names_its_transport_and_a_console_bot_says_why_it_stops() {
    let (ok, _, err) = check("[[bot]]\nname = \"ops\"\n");
    assert!(!ok);
    assert!(
        err.starts_with("bots.toml:1: `bot[0]`: bot `ops` has no [bot.transport]")
            && err.contains("kind = \"console\""),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::common::opsbot()
        .args(["run", "--config"])
        .arg(examples().join("console.toml"))
        .env("XDG_STATE_HOME", dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("which is not a terminal"), "{err}");
    assert!(err.contains("the input ended"), "{err}");
    let out = crate::common::opsbot()
        .args(["check", "--config"])
        .arg(examples().join("console.toml"))
        .env("NOTIFY_SOCKET", dir.path().join("notify"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: ") && err.contains("a console bot under a service manager"),
        "{err}"
    );
}

#[test]
fn a_rate_no_pacer_can_keep_is_refused_before_running() {
    let text = "[[bot]]\nname = \"x\"\nhandlers = [\"lines\"]\n[bot.transport]\nkind = \"console\"\n\
                [bot.outbox]\nrate = 1e-300\n";
    let (ok, _, err) = check(text);
    assert!(!ok);
    assert!(
        err.starts_with(
            "bots.toml:7: `bot[0].outbox.rate`: 1e-300 per second is outside what a pacer can keep"
        ),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deaf.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = crate::common::opsbot()
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(wait_exit(&mut child).code(), Some(2));
}

#[test]
fn every_example_config_checks_clean() {
    let mut n = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("Cargo.toml") {
            let secret = "from-the-environment";
            checks_clean(
                &path,
                &[
                    ("IRC_SASL_PASSWORD", secret),
                    ("XMPP_PASSWORD", secret),
                    ("WEBEX_TOKEN", secret),
                    ("MATRIX_PASSWORD", secret),
                    ("MATRIX_STORE_PASSPHRASE", secret),
                    (
                        "MATRIX_RECOVERY",
                        "a recovery passphrase from the environment",
                    ),
                    (
                        "OPSBOT_ADMIN_TOKEN",
                        "an-admin-token-from-the-environment-0123",
                    ),
                    (
                        "OPSBOT_ALERTMANAGER_TOKEN",
                        "an-alertmanager-token-0123456789",
                    ),
                    ("OPSBOT_CI_SECRET", "a-ci-secret-0123456789abcdef"),
                ],
            );
            n += 1;
        }
    }
    assert!(n >= 3);
}

#[test]
fn a_missing_secret_is_a_config_error_that_names_it_without_a_value() {
    let config = examples().join("irc.toml");
    let out = crate::common::opsbot()
        .args(["check", "--config"])
        .arg(&config)
        .env_remove("IRC_SASL_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "`bot[0].transport.sasl.password`: environment variable IRC_SASL_PASSWORD is not set"
        ),
        "{err}"
    );
}

#[test]
fn irc_settings_are_checked_before_connecting() {
    let head =
        "[[bot]]\nname = \"ops\"\n[bot.transport]\nkind = \"irc\"\nserver = \"irc.example.org\"\n";
    let (ok, _, err) = check(&format!("{head}nick = \"ops\"\nprofile = \"fast\"\n"));
    assert!(!ok);
    assert!(
        err.contains("`bot[0].transport.profile`: unknown variant `fast`"),
        "{err}"
    );
    let (ok, _, err) = check(&format!("{head}nick = \"ops\"\nchanels = []\n"));
    assert!(!ok);
    assert!(
        err.contains("`bot[0].transport.chanels`: unknown field `chanels`"),
        "{err}"
    );
    let (ok, _, err) = check(&format!(
        "{head}nick = \"bad nick\"\nchannels = [\"ops\"]\n"
    ));
    assert!(!ok);
    assert!(
        err.contains("`bot[0].transport.nick`: `bad nick` is not a valid nick"),
        "{err}"
    );
    assert!(
        err.contains("`bot[0].transport.channels[0]`: `ops` is not a channel name"),
        "{err}"
    );
}

/// `tls = false` to a server not named as this machine sent the server password, SASL and
/// NickServ passwords in clear text. `run` now refuses before connecting: a listener behind a
/// name that is not a loopback address as written (`localhost.`) hears nothing, and
/// `allow_plaintext = true` is the operator saying the network is theirs.
#[test]
fn passwords_never_go_out_in_clear_text_unless_the_operator_says_so() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = |extra: &str| {
        format!(
            "[state]\npath = \"{}\"\n[[bot]]\nname = \"ops\"\n[bot.transport]\nkind = \"irc\"\n\
             server = \"localhost.\"\nport = {port}\ntls = false\nnick = \"opsbot\"\n\
             password = \"${{IRC_PASS}}\"\nnickserv_password = \"${{IRC_PASS}}\"\n{extra}\
             [bot.transport.sasl]\nuser = \"opsbot\"\npassword = \"${{IRC_PASS}}\"\n",
            dir.path().join("state.redb").display()
        )
    };
    let path = dir.path().join("bots.toml");
    std::fs::write(&path, config("")).unwrap();
    let mut child = crate::common::opsbot()
        .args(["run", "--config"])
        .arg(&path)
        .env("IRC_PASS", "s3cret-pass")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("`bot[0].transport.tls`: is off, and the passwords would cross the network to localhost. in clear text")
            && err.contains("allow_plaintext = true"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    assert!(listener.accept().is_err(), "the bot connected");
    std::fs::write(&path, config("allow_plaintext = true\n")).unwrap();
    let (ok, _, err) = {
        let out = crate::common::opsbot()
            .args(["check", "--config"])
            .arg(&path)
            .env("IRC_PASS", "s3cret-pass")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::new(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(ok, "{err}");
}

/// The examples differ in their transport and in how admins are written, which each service
/// proves its own way (a host mask on IRC, a JID on XMPP, an email on Webex, a user id on
/// Matrix); `check` passes each with no warning, so each admin list is right for its
/// transport.
#[test]
fn the_irc_xmpp_webex_and_matrix_examples_differ_only_in_their_transport_and_admins() {
    let load = |name: &str| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(examples().join(name)).unwrap()).unwrap()
    };
    let take = |t: &mut toml::Table| -> (toml::Value, toml::Value) {
        let bots = t["bot"].as_array_mut().unwrap();
        assert_eq!(bots.len(), 1);
        let bot = bots[0].as_table_mut().unwrap();
        (
            bot.remove("transport").unwrap(),
            bot.remove("admins").unwrap(),
        )
    };
    let mut irc = load("irc.toml");
    let (t, admins) = take(&mut irc);
    assert_eq!(t["kind"].as_str(), Some("irc"));
    assert_eq!(admins, toml::Value::from(vec!["*!*@ops.example.com"]));
    for (file, kind, admin) in [
        ("xmpp.toml", "xmpp", "alice@example.org"),
        ("webex.toml", "webex", "alice@example.org"),
        ("matrix.toml", "matrix", "@alice:example.org"),
    ] {
        let mut other = load(file);
        let (t, admins) = take(&mut other);
        assert_eq!(t["kind"].as_str(), Some(kind));
        assert_eq!(admins, toml::Value::from(vec![admin]));
        assert_eq!(
            irc, other,
            "{file} differs from irc.toml outside [bot.transport] and admins"
        );
    }
    for (file, var) in [
        ("irc.toml", "IRC_SASL_PASSWORD"),
        ("xmpp.toml", "XMPP_PASSWORD"),
        ("webex.toml", "WEBEX_TOKEN"),
    ] {
        checks_clean(&examples().join(file), &[(var, "example-secret")]);
    }
    checks_clean(
        &examples().join("matrix.toml"),
        &[
            ("MATRIX_PASSWORD", "example-secret"),
            ("MATRIX_STORE_PASSPHRASE", "example-secret"),
            ("MATRIX_RECOVERY", "example recovery passphrase"),
        ],
    );
}

/// Admin entries are checked against what each transport can prove: an IRC mask on XMPP or
/// Webex could match a room nick anyone can choose (`x!y@ops.example.com`), so it is an error
/// with a hint; on IRC a mask that trusts only the nick is a warning, and an entry that is no
/// mask at all an error.
#[test]
fn admin_entries_must_be_identities_the_transport_can_prove() {
    let bot = |kind: &str, admins: &str, extra: &str| {
        format!(
            "[[bot]]\nname = \"ops\"\nadmins = [{admins}]\n[bot.transport]\nkind = \"{kind}\"\n{extra}"
        )
    };
    let xmpp = "jid = \"bot@example.org\"\npassword = \"x\"\n";
    let webex = "token = \"abc\"\n";
    for (kind, extra) in [("xmpp", xmpp), ("webex", webex)] {
        let (ok, _, err) = check(&bot(
            kind,
            "\"alice@example.org\", \"*!*@ops.example.com\", \"*@example.org\", \"ops@conference.example.org/alice\"",
            extra,
        ));
        assert!(!ok, "{kind}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{kind}: {err}");
        for (line, i) in lines.iter().zip(1..) {
            assert!(
                line.starts_with(&format!("bots.toml:3: `bot[0].admins[{i}]`: `"))
                    && line.contains(&format!(
                        "is not an address this transport can prove for a {kind} bot"
                    ))
                    && line.contains("(hint: write the whole address"),
                "{kind}: {line}"
            );
        }
        let (ok, _, err) = check(&bot(kind, "\"Alice@Example.org\"", extra));
        assert!(ok && err.is_empty(), "{kind}: {err}");
    }
    let irc = "server = \"irc.example.org\"\nnick = \"opsbot\"\n";
    let (ok, _, err) = check(&bot("irc", "\"*!*@ops.example.com\", \"alice!*@*\"", irc));
    assert!(ok, "{err}");
    assert!(
        err.starts_with("warning: bots.toml:3: `bot[0].admins[1]`: `alice!*@*` trusts only a nick"),
        "{err}"
    );
    let (ok, _, err) = check(&bot("irc", "\"alice@example.org\"", irc));
    assert!(!ok);
    assert!(
        err.contains("`bot[0].admins[0]`: `alice@example.org` is not an IRC host mask"),
        "{err}"
    );
}

/// `[bot.access]` names commands the bot has and identities its transport can prove.
#[test]
fn access_lists_are_checked_against_the_bots_commands_and_transport() {
    let bot = |access: &str| {
        format!(
            "[[bot]]\nname = \"ops\"\n[bot.transport]\nkind = \"xmpp\"\njid = \"bot@example.org\"\n\
             password = \"x\"\n[bot.access]\n{access}"
        )
    };
    let (ok, _, err) = check(&bot(
        "whereareyou = \"admins\"\nstatus = [\"alice@example.org\"]\ndns = \"everyone\"\n",
    ));
    assert!(!ok, "dns is not enabled");
    assert!(
        err.contains("`bot[0].access.dns`: `dns` is not a command of this bot (hint: its commands: echo, heal, help, status, whereareyou, whoami)"),
        "{err}"
    );
    let (ok, _, err) = check(&bot(
        "whereareyou = \"admins\"\nstatus = [\"alice@example.org\"]\n",
    ));
    assert!(ok, "{err}");
    for (access, want) in [
        (
            "status = \"nobody\"\n",
            "`bot[0].access.status`: `nobody` is not who may run it",
        ),
        (
            "status = [\"*!*@ops.example.com\"]\n",
            "`bot[0].access.status[0]`: `*!*@ops.example.com` is not an address",
        ),
        (
            "heal = \"everyone\"\n",
            "`bot[0].access.heal`: `heal` is for admins only already",
        ),
    ] {
        let (ok, _, err) = check(&bot(access));
        assert!(!ok, "{access}");
        assert!(err.contains(want), "{access}: {err}");
    }
}

#[test]
fn webex_and_http_client_settings_are_checked_before_connecting() {
    let head = "[[bot]]\nname = \"ops\"\n[bot.transport]\nkind = \"webex\"\n";
    let (ok, _, err) = check(&format!(
        "{head}token = \"abc\"\nrest_url = \"http://webexapis.com/v1\"\napproved_domains = [\"@x.org\"]\nmax_message_bytes = 10000\n"
    ));
    assert!(!ok);
    for want in [
        "`bot[0].transport.rest_url`: may use http only for a server on a loopback address",
        "`bot[0].transport.approved_domains[0]`: `@x.org` is not a domain",
        "`bot[0].transport.max_message_bytes`: must be 64 to 7439",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
    assert!(!err.contains("abc"), "the token leaked: {err}");
    let (ok, _, err) = check(&format!("{head}tokn = \"abc\"\n"));
    assert!(!ok);
    assert!(
        err.contains("`bot[0].transport.tokn`: unknown field `tokn`"),
        "{err}"
    );
    let (ok, _, err) = check(&format!(
        "[http_client]\nmax_connections_per_host = 0\ntimeout_secs = -1\nretries = 99\n{head}token = \"abc\"\n"
    ));
    assert!(!ok);
    for want in [
        "`http_client.max_connections_per_host`: 0 connections per host cannot work",
        "`http_client.timeout_secs`: -1 is not a positive number of seconds",
        "`http_client.retries`: 99 retries would hide an outage for too long",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
}

#[test]
fn xmpp_settings_are_checked_before_connecting() {
    let head = "[[bot]]\nname = \"ops\"\n[bot.transport]\nkind = \"xmpp\"\npassword = \"pw\"\n";
    let (ok, _, err) = check(&format!(
        "{head}jid = \"bot@xmpp.example.org\"\ntls = false\nrooms = [\"not a room\"]\n"
    ));
    assert!(!ok);
    assert!(
        err.contains("`bot[0].transport.tls`: may be off only for a server on a loopback address"),
        "{err}"
    );
    assert!(
        err.contains("`bot[0].transport.rooms[0]`: `not a room` is not a room JID"),
        "{err}"
    );
    let (ok, _, err) = check(&format!("{head}jid = \"bot@localhost\"\ntls = false\n"));
    assert!(ok, "{err}");
    let (ok, _, err) = check(&format!(
        "{head}jid = \"bot@example.org\"\nresourse = \"x\"\n"
    ));
    assert!(!ok);
    assert!(
        err.contains("`bot[0].transport.resourse`: unknown field"),
        "{err}"
    );
}

#[test]
fn the_dns_handler_is_enabled_by_name_and_its_settings_are_checked() {
    let head =
        "[[bot]]\nname = \"ops\"\nhandlers = [\"dns\"]\n[bot.transport]\nkind = \"console\"\n";
    let (ok, _, err) = check(&format!(
        "{head}[bot.handler.dns]\nnameservers = [\"127.0.0.1:5353\"]\ntimeout_secs = 2\n"
    ));
    assert!(ok, "{err}");
    let (ok, _, err) = check(&format!(
        "{head}[bot.handler.dns]\nnameservers = [\"dns.example\"]\n"
    ));
    assert!(!ok);
    assert!(
        err.contains(
            "bots.toml:7: `bot[0].handler.dns.nameservers[0]`: `dns.example` is not an address"
        ),
        "{err}"
    );
    let (ok, _, err) = check(&format!("{head}[bot.handler.dns]\ntimeout = 2\n"));
    assert!(!ok);
    assert!(
        err.contains("`bot[0].handler.dns.timeout`: unknown field `timeout`"),
        "{err}"
    );
}

#[test]
fn univac_checks_clean_on_irc_and_xmpp_and_differs_only_in_its_transport_and_admins() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let load = |f: &str| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap()
    };
    let (mut irc, mut xmpp) = (load("univac.toml"), load("univac-xmpp.toml"));
    for t in [&mut irc, &mut xmpp] {
        let bot = t["bot"].as_array_mut().unwrap()[0].as_table_mut().unwrap();
        bot.remove("transport").unwrap();
        bot.remove("admins").unwrap();
    }
    assert_eq!(irc, xmpp);
    for f in ["univac.toml", "univac-xmpp.toml"] {
        checks_clean(
            &dir.join(f),
            &[
                ("TICKETS_TOKEN", "t"),
                ("IRC_SASL_PASSWORD", "p"),
                ("XMPP_PASSWORD", "p"),
            ],
        );
    }
}

#[test]
fn the_library_handlers_work_by_name_alone() {
    let (ok, _, err) = check(
        "[[bot]]\nname = \"ops\"\nhandlers = [\"links\", \"dns\"]\n[bot.transport]\nkind = \"console\"\n",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = check(
        "[[bot]]\nname = \"ops\"\nhandlers = [\"links\"]\n[bot.handler.links]\nallow = [\"10.0.0.0/33\"]\n[bot.transport]\nkind = \"console\"\n",
    );
    assert!(!ok);
    assert!(
        err.contains("bots.toml:5: `bot[0].handler.links.allow[0]`: `10.0.0.0/33`: the prefix length must be 0 to 32"),
        "{err}"
    );
    let (ok, _, err) = check(
        "[[bot]]\nname = \"ops\"\npollers = [\"feed\"]\n[bot.poller.feed]\nurl = \"https://x.example/feed\"\n[bot.transport]\nkind = \"console\"\n",
    );
    assert!(!ok);
    assert!(
        err.contains("`bot[0].poller.feed.to`: a poller needs somewhere to post"),
        "{err}"
    );
    // Handler and poller lists and tables are checked alike: a repeat, and a table for a
    // name the list does not have, each with its line.
    let (ok, _, err) = check(
        "[[bot]]\nname = \"ops\"\nhandlers = [\"dns\", \"dns\"]\npollers = [\"feed\", \"feed\"]\n\
         [bot.transport]\nkind = \"console\"\n",
    );
    assert!(!ok);
    assert!(
        err.contains("bots.toml:3: `bot[0].handlers`: handler `dns` is listed twice"),
        "{err}"
    );
    assert!(
        err.contains("bots.toml:4: `bot[0].pollers`: poller `feed` is listed twice"),
        "{err}"
    );
    let (ok, _, err) = check(
        "[[bot]]\nname = \"ops\"\n[bot.poller.fed]\nurl = \"https://x.example/feed\"\n\
         [bot.transport]\nkind = \"console\"\n",
    );
    assert!(!ok);
    assert!(
        err.contains(
            "bots.toml:3: `bot[0].poller.fed`: settings for `fed`, which `pollers` does not list"
        ),
        "{err}"
    );
}

#[test]
fn under_systemd_the_binary_says_ready_pings_the_watchdog_and_says_stopping() {
    use std::io::Write;
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = crate::common::opsbot()
        .args(["run", "--config"])
        .arg(examples().join("console.toml"))
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 128];
    let mut read = || {
        let n = sock.recv(&mut buf).expect("a state line within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(read(), "READY=1");
    assert_eq!(read(), "WATCHDOG=1");
    assert_eq!(read(), "WATCHDOG=1");
    // End of input: a graceful stop.
    child.stdin.take().unwrap().write_all(b"").unwrap();
    let mut last = String::new();
    for _ in 0..50 {
        last = read();
        if last == "STOPPING=1" {
            break;
        }
    }
    assert_eq!(last, "STOPPING=1");
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_systemd_unit_restarts_watches_and_hardens() {
    let unit = std::fs::read_to_string(examples().join("opsbot.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=30",
        "Restart=always",
        "RestartSec=10",
        "User=opsbot",
        "StateDirectory=opsbot",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
    ] {
        assert!(unit.lines().any(|l| l.trim() == line), "missing {line}");
    }
    assert!(!unit.lines().any(|l| l.trim() == "User=root"));
}

#[test]
fn the_kubernetes_example_runs_one_non_root_replica_with_probes_and_a_valid_config() {
    let dir = examples().join("kubernetes");
    let deploy = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    let lines: Vec<&str> = deploy.lines().map(str::trim).collect();
    for want in [
        "replicas: 1",
        "type: Recreate",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "path: /livez",
        "path: /readyz",
        "mountPath: /var/lib/opsbot",
        "claimName: opsbot-state",
        "name: opsbot-secrets",
        "key: admin-token",
    ] {
        assert!(lines.contains(&want), "deployment.yaml lacks `{want}`");
    }
    // The config the ConfigMap carries passes `opsbot check`, with the Secret's values set.
    checks_clean(
        &dir.join("bots.toml"),
        &[
            ("OPSBOT_ADMIN_TOKEN", "0123456789abcdef0123456789abcdef"),
            ("IRC_SASL_PASSWORD", "secret"),
        ],
    );
    let config = std::fs::read_to_string(dir.join("bots.toml")).unwrap();
    assert!(config.contains("path = \"/var/lib/opsbot/state.redb\""));
    assert!(config.contains("listen = \"0.0.0.0:9120\""));
}

#[test]
fn an_admin_token_written_in_the_file_and_a_bad_listen_address_are_refused() {
    let (ok, _, err) = check(
        "[http]\nadmin_token = \"hunter2hunter2hunter2\"\n[[bot]]\nname = \"a\"\n[bot.transport]\nkind = \"console\"\n",
    );
    assert!(!ok);
    assert!(
        err.contains("`http.admin_token`: the token is written in the file itself"),
        "{err}"
    );
    let (ok, _, err) = check(
        "[http]\nlisten = \"localhost\"\n[[bot]]\nname = \"a\"\n[bot.transport]\nkind = \"console\"\n",
    );
    assert!(!ok);
    assert!(
        err.contains("bots.toml:2: `http.listen`: `localhost` is not an address and port"),
        "{err}"
    );
}

/// `${EMPTY}aaaa…` was taken as a token: the part written in the file was the whole secret.
/// A token is now one environment variable, holding at least 16 characters of at least 8
/// kinds. An API reachable from other machines needs one (or says it is guarded otherwise),
/// and `hosts` holds host names.
#[test]
fn a_weak_or_partly_written_admin_token_and_an_open_api_without_one_are_refused() {
    let bot = "[[bot]]\nname = \"a\"\n[bot.transport]\nkind = \"console\"\n";
    let strong = ("T", "c2f9a1e0b7d84e6f9a0b1c2d3e4f5a6b");
    for (token, env, want) in [
        (
            "${EMPTY}aaaaaaaaaaaaaaaaaaaaaaaa",
            ("EMPTY", ""),
            "the token must be one environment variable and nothing else",
        ),
        (
            "${T}",
            ("T", "aaaaaaaaaaaaaaaaaaaaaaaa"),
            "fewer than 8 different characters",
        ),
        ("${T}", ("T", "short-token"), "fewer than 16 characters"),
        (
            "${T}",
            ("T", "a b c d e f g h i j k l"),
            "spaces or control characters",
        ),
    ] {
        let (ok, _, err) = check_env(&format!("[http]\nadmin_token = \"{token}\"\n{bot}"), &[env]);
        assert!(!ok, "{token} {env:?}");
        assert!(
            err.contains("bots.toml:2: `http.admin_token`: ") && err.contains(want),
            "{token}: {err}"
        );
        assert!(
            !err.contains(env.1) || env.1.is_empty(),
            "the secret was shown: {err}"
        );
    }
    let (ok, _, err) = check_env(
        &format!("[http]\nadmin_token = \"${{T}}\"\n{bot}"),
        &[strong],
    );
    assert!(ok, "{err}");

    let (ok, _, err) = check(&format!("[http]\nlisten = \"0.0.0.0:9120\"\n{bot}"));
    assert!(!ok);
    assert!(
        err.contains("`http.listen`: 0.0.0.0:9120 is reachable from other machines, and the API has no admin_token"),
        "{err}"
    );
    for extra in ["open_without_token = true\n", "admin_token = \"${T}\"\n"] {
        let (ok, _, err) = check_env(
            &format!("[http]\nlisten = \"0.0.0.0:9120\"\n{extra}{bot}"),
            &[strong],
        );
        assert!(ok, "{extra}: {err}");
    }
    let (ok, _, err) = check(&format!(
        "[http]\nhosts = [\"opsbot.example\", \"http://x/\"]\n{bot}"
    ));
    assert!(!ok);
    assert!(
        err.contains("`http.hosts[1]`: `http://x/` is not a host name"),
        "{err}"
    );
}

#[test]
fn a_status_api_port_already_taken_is_a_clear_error_before_any_bot_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bots.toml");
    std::fs::write(
        &path,
        format!(
            "[state]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[[bot]]\nname = \"a\"\n[bot.transport]\nkind = \"console\"\n",
            dir.path().join("state.redb").display()
        ),
    )
    .unwrap();
    let out = crate::common::opsbot()
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("[http] listen 127.0.0.1:{port}:")),
        "{err}"
    );
    // No bot started: the console bot never said hello.
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
