//! A real nats-server with JetStream (Debian's `nats-server`) on loopback ports of its own,
//! its store in a folder the caller gives.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::http::http;

/// A nats-server with JetStream on a free loopback port, its store in a folder of its own;
/// killed when dropped.
pub struct Nats {
    child: Child,
    pub port: u16,
    pub monitor: u16,
}

impl Nats {
    pub fn start(store: &Path) -> Self {
        Self::start_on(store, free_port(), free_port())
    }

    /// On `port`, with its monitoring endpoint on `monitor`.
    pub fn start_on(store: &Path, port: u16, monitor: u16) -> Self {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg("-m")
            .arg(monitor.to_string())
            .arg("-sd")
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(monitor, "GET", "/healthz?js-enabled-only=true", &[], b"").0 != 200 {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            monitor,
        }
    }

    /// With a config file of its own (which must listen on `port`, with monitoring on
    /// `monitor`), and `env` for the `$VARIABLES` it names.
    pub fn start_with_config(config: &Path, port: u16, monitor: u16, env: &[(&str, &str)]) -> Self {
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(monitor, "GET", "/healthz?js-enabled-only=true", &[], b"").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start with {}",
                config.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            monitor,
        }
    }

    /// Messages in JetStream, as the server's monitoring endpoint counts them.
    pub fn messages(&self) -> u64 {
        let (_, body) = http(self.monitor, "GET", "/jsz", &[], b"");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["messages"].as_u64().unwrap_or(0)
    }

    /// Killed (SIGKILL), as a crash would stop it.
    pub fn kill(mut self) -> (u16, u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.port, self.monitor)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
