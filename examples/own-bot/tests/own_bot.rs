//! The own-binary example, as a user runs it: its handler with settings answers on the console
//! and on a real IRC server (ngircd, started here on a free loopback port) from two configs
//! that differ only in `[bot.transport]`, and `check` names a bad setting by its key path.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_own-bot");

fn here(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
}

/// Kills the child when dropped, so a failed test leaves nothing running.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_console_and_irc_configs_differ_only_in_their_transport_and_admins() {
    let load = |f: &str| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(here(f)).unwrap()).unwrap()
    };
    let (mut console, mut irc) = (load("console.toml"), load("irc.toml"));
    for t in [&mut console, &mut irc] {
        let bot = t["bot"].as_array_mut().unwrap()[0].as_table_mut().unwrap();
        bot.remove("transport").unwrap();
        // Each transport proves identity its own way: a host mask on IRC, `console` here.
        bot.remove("admins").unwrap();
    }
    assert_eq!(console, irc);
    for f in ["console.toml", "irc.toml"] {
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(here(f))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn greet_answers_on_the_console_with_its_settings() {
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(here("console.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"!greet ops\n!help greet\n")
        .unwrap();
    // End of input: the bot answers what it has, then stops.
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Good morning, ops!"), "{stdout}");
    assert!(stdout.contains("Greet someone."), "{stdout}");
}

#[test]
fn check_names_a_bad_setting_by_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(here("console.toml"))
        .unwrap()
        .replace("shout = false", "shuot = false");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":12: `bot[0].handler.greet.shuot`: unknown field `shuot`")
            && err.contains("(hint: did you mean `shout`?)"),
        "{err}"
    );

    let text = std::fs::read_to_string(here("console.toml"))
        .unwrap()
        .replace("Good morning, {name}!", "Good morning!")
        .replace(
            "handlers = [\"greet\"]",
            "handlers = [\"greet\"]\n[bot.handler.gret]\nx = 1",
        );
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`bot[0].handler.greet.greeting`: must contain {name}"),
        "{err}"
    );
    assert!(
        err.contains("`bot[0].handler.gret`: settings for `gret`, which `handlers` does not list"),
        "{err}"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ngircd() -> PathBuf {
    [
        "/usr/sbin/ngircd",
        "/usr/bin/ngircd",
        "/usr/local/sbin/ngircd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("ngircd is installed (scripts/test installs it)")
}

fn connect(port: u16, within: Duration) -> TcpStream {
    let deadline = Instant::now() + within;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < deadline, "nothing listens on {port}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn greet_answers_on_irc_from_the_same_bot_with_another_transport() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("ngircd.conf");
    std::fs::write(
        &conf,
        format!(
            "[Global]\n\tName = irc.test\n\tListen = 127.0.0.1\n\tPorts = {port}\n\
             \tPidFile = {}/ngircd.pid\n[Limits]\n\tMaxConnectionsIP = 0\n\
             [Options]\n\tPAM = no\n\tDNS = no\n\tIdent = no\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let _server = Kill(
        Command::new(ngircd())
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    drop(connect(port, Duration::from_secs(10)));
    let config = dir.path().join("irc.toml");
    std::fs::write(
        &config,
        std::fs::read_to_string(here("irc.toml"))
            .unwrap()
            .replace("port = 6667", &format!("port = {port}")),
    )
    .unwrap();
    let _bot = Kill(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let stream = connect(port, Duration::from_secs(10));
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    w.write_all(b"NICK alice\r\nUSER alice 0 * :Alice\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut asked = false;
    loop {
        assert!(Instant::now() < deadline, "the greeter never answered");
        if !asked {
            // Ask whether the bot is on the server yet; greet it once it is.
            w.write_all(b"ISON greeter\r\n").unwrap();
        }
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(_) => {}
            Err(_) => continue,
        }
        if line.starts_with("PING") {
            w.write_all(line.replacen("PING", "PONG", 1).as_bytes())
                .unwrap();
        } else if !asked && line.contains(" 303 ") && line.contains(":greeter") {
            w.write_all(b"PRIVMSG greeter :!greet alice\r\n").unwrap();
            asked = true;
        } else if line.starts_with(":greeter!") && line.contains("PRIVMSG alice :") {
            assert!(line.contains("Good morning, alice!"), "{line}");
            break;
        }
    }
}

/// The README's `Cargo.toml` for a bot in a repository of its own, with this program's
/// `main.rs`, is a project cargo takes: its dependencies resolve against this checkout
/// (offline, from what the workspace already fetched), with no workspace around it.
#[test]
fn the_readmes_standalone_manifest_is_a_project_of_its_own() {
    let readme = std::fs::read_to_string(here("../../README.md")).unwrap();
    let start = readme
        .find("```toml\n[package]\nname = \"greeter\"")
        .expect("the standalone Cargo.toml in README.md");
    let manifest = &readme[start + "```toml\n".len()..];
    let manifest = &manifest[..manifest.find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    // The README puts opsbot's checkout beside the project: here it is this one.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap();
    let project = dir.path().join("greeter");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        manifest.replace("../opsbot/", &format!("{}/", root.display())),
    )
    .unwrap();
    std::fs::copy(here("src/main.rs"), project.join("src/main.rs")).unwrap();
    std::fs::copy(root.join("Cargo.lock"), project.join("Cargo.lock")).unwrap();
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--offline",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(project.join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = String::from_utf8_lossy(&out.stdout);
    assert!(meta.contains("\"name\":\"greeter\""), "{meta}");
    assert!(meta.contains("\"name\":\"opsbot-bots\""));
}
