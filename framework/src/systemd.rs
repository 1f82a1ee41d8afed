//! The systemd notify protocol: `READY=1` once every bot has started, `STOPPING=1` at shutdown,
//! and `WATCHDOG=1` only while every bot's thread answers, so that a wedged runtime stops the
//! pings and systemd (`WatchdogSec=`) restarts the process.
//!
//! The protocol is a datagram per state change to the unix socket named by `$NOTIFY_SOCKET`
//! (`@name` for an abstract socket); `$WATCHDOG_USEC` sets the watchdog period, and the pings
//! go at half of it. Without `$NOTIFY_SOCKET` nothing is sent.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where and how often to notify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    /// The socket (`@name`: abstract).
    pub socket: PathBuf,
    /// The watchdog period, if systemd asked for one.
    pub watchdog: Option<Duration>,
}

impl Notify {
    /// From `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (ignored when `$WATCHDOG_PID` names another
    /// process); `None` when not run under systemd's notify protocol.
    pub fn from_env() -> Option<Self> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Some(Self {
            socket: PathBuf::from(socket),
            watchdog,
        })
    }

    /// Sends one state line (`READY=1`); failures are logged, never fatal.
    pub fn send(&self, state: &str) {
        let result = UnixDatagram::unbound().and_then(|sock| {
            let path = self.socket.as_os_str().as_encoded_bytes();
            if let Some(name) = path.strip_prefix(b"@") {
                send_abstract(&sock, name, state.as_bytes())
            } else {
                sock.send_to(state.as_bytes(), &self.socket).map(|_| ())
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, socket = %self.socket.display(), state, "cannot notify systemd");
        }
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(sock: &UnixDatagram, name: &[u8], msg: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(msg, &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> std::io::Result<()> {
    Err(std::io::Error::other("abstract sockets are Linux-only"))
}

/// A bot thread's proof of life: the time of its last tick, in milliseconds since `base`.
#[derive(Clone, Debug)]
pub(crate) struct Heartbeat {
    base: Instant,
    last: Arc<AtomicU64>,
}

impl Heartbeat {
    pub(crate) fn new(base: Instant) -> Self {
        Self {
            base,
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Called from the bot's own thread.
    pub(crate) fn beat(&self) {
        self.last
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the last beat.
    pub(crate) fn age(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}
