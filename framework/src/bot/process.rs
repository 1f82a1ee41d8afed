//! The process runtime: runs a process's bots on the calling thread until they stop, with
//! signals, systemd notifications and the watchdog, the persisted healing log and the HTTP
//! status API.

use super::*;

/// Runs bots until they all stop: at SIGINT or SIGTERM, at the end of console input, or when
/// every transport has finished. Each bot gets its own arbiter thread.
///
/// A bot whose own machinery fails (a panic in the framework's router, outbox or hosts, never
/// in a handler, which is restarted) is stopped while the others go on; once every bot has
/// stopped, the answer is an error naming each failed bot, so that `main` exits non-zero and a
/// service manager restarts the process.
pub fn run(bots: Vec<Bot>) -> std::io::Result<()> {
    run_process(
        bots,
        RunOptions {
            signals: true,
            notify: crate::systemd::Notify::from_env(),
            ..RunOptions::default()
        },
    )
}

/// How [`run_process`] runs a process's bots.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// Stops the bots gracefully when triggered.
    pub shutdown: Shutdown,
    /// Also stop at SIGINT and SIGTERM.
    pub signals: bool,
    /// Tell systemd (see [`crate::systemd`]): `READY=1` once every bot has started,
    /// `WATCHDOG=1` while every bot's thread answers, `STOPPING=1` at shutdown.
    pub notify: Option<crate::systemd::Notify>,
    /// The process's persisted healing log: every bot writes its entries there too.
    pub healing_log: Option<crate::healing_log::HealingLog>,
    /// The HTTP status API (`[http]`), one server for every bot of the process.
    #[cfg(feature = "status-api")]
    pub http: Option<crate::config::HttpConfig>,
    /// More routes for that server (see [`crate::status_api::ApiMount`]).
    #[cfg(feature = "status-api")]
    pub api: Vec<crate::status_api::ApiMount>,
}

impl RunOptions {
    /// Defaults: no signals, no systemd, no persisted log, no HTTP.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A handle that stops running bots gracefully. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A handle that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a graceful shutdown of every bot run with this handle.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// Whether the shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// Runs bots on the calling thread until they all stop or `shutdown` fires (and, with
/// `signals`, at SIGINT or SIGTERM).
pub fn run_until(bots: Vec<Bot>, shutdown: Shutdown, signals: bool) -> std::io::Result<()> {
    run_with(bots, shutdown, signals, None)
}

/// Like [`run_until`], telling systemd through `notify` (see [`crate::systemd`]): `READY=1`
/// once every bot has started, `WATCHDOG=1` while every bot's thread answers, `STOPPING=1`
/// at shutdown. [`run`] takes `notify` from the environment.
pub fn run_with(
    bots: Vec<Bot>,
    shutdown: Shutdown,
    signals: bool,
    notify: Option<crate::systemd::Notify>,
) -> std::io::Result<()> {
    run_process(
        bots,
        RunOptions {
            shutdown,
            signals,
            notify,
            ..RunOptions::default()
        },
    )
}

/// Runs a process's bots on the calling thread until they all stop, as `options` say: the
/// shutdown handle and signals, systemd, the persisted healing log and the HTTP status API.
/// An HTTP listener that cannot be opened is an error before any bot starts.
pub fn run_process(bots: Vec<Bot>, options: RunOptions) -> std::io::Result<()> {
    let RunOptions {
        shutdown,
        signals,
        notify,
        healing_log,
        #[cfg(feature = "status-api")]
        http,
        #[cfg(feature = "status-api")]
            api: mounts,
    } = options;
    if let Some(log) = &healing_log {
        for b in &bots {
            b.health.set_journal(log.clone());
        }
    }
    let base = std::time::Instant::now();
    let beats: Vec<(String, crate::systemd::Heartbeat)> = bots
        .iter()
        .map(|b| (b.name.clone(), crate::systemd::Heartbeat::new(base)))
        .collect();
    let system = actix::System::new();
    #[cfg(feature = "status-api")]
    let server = match http {
        Some(api) => {
            let bots = bots
                .iter()
                .zip(&beats)
                .map(|(b, (_, beat))| (b.health(), beat.clone()))
                .collect();
            let log = healing_log.clone();
            Some(
                system
                    .block_on(async move { crate::status_api::start(&api, bots, log, mounts) })?,
            )
        }
        None => None,
    };
    let (stopped, failures) = system.block_on(async move {
        let token = shutdown.0;
        if signals {
            spawn_signal_watch(token.clone());
        }
        let mut starts = Vec::new();
        let running: Vec<_> = bots
            .into_iter()
            .zip(beats.iter().map(|(_, b)| b.clone()))
            .map(|(b, beat)| {
                let (name, health) = (b.name.clone(), b.health());
                let (started_tx, started_rx) = oneshot::channel();
                let (arbiter, done) = spawn_bot(b, token.clone(), Some(beat), Some(started_tx));
                starts.push(started_rx);
                (name, health, arbiter, done)
            })
            .collect();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(notify) = notify.clone() {
            actix::spawn(tell_systemd(
                notify,
                starts,
                beats,
                token.clone(),
                stopping.clone(),
            ));
        }
        let mut stopped = Vec::new();
        let mut failures = Vec::new();
        for (name, health, arbiter, done) in running {
            if let Err(why) = ended(done.await, &health) {
                failures.push(format!("bot {name} failed: {why}"));
            }
            arbiter.stop();
            stopped.push(arbiter);
        }
        // Every bot ended on its own (end of input): the process is stopping all the same.
        if let Some(notify) = &notify
            && !stopping.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            notify.send("STOPPING=1");
        }
        #[cfg(feature = "status-api")]
        if let Some(server) = server {
            server.stop(true).await;
        }
        (stopped, failures)
    });
    for a in stopped {
        let _ = a.join();
    }
    if let Some(log) = &healing_log
        && !log.flush(Duration::from_secs(5))
    {
        tracing::warn!("healing log: the last entries may not have reached the disk");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(std::io::Error::other(failures.join("; ")))
    }
}

/// How often each bot thread proves it is alive.
pub(super) const HEARTBEAT: Duration = Duration::from_millis(200);

/// Tells systemd: ready once every bot started, a watchdog ping every half period while every
/// bot thread beat within that half period, stopping at shutdown.
pub(super) async fn tell_systemd(
    notify: crate::systemd::Notify,
    starts: Vec<oneshot::Receiver<()>>,
    beats: Vec<(String, crate::systemd::Heartbeat)>,
    shutdown: CancellationToken,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) {
    let all_started = async {
        for s in starts {
            let _ = s.await;
        }
    };
    tokio::select! {
        () = all_started => notify.send("READY=1"),
        () = shutdown.cancelled() => {}
    }
    let period = notify
        .watchdog
        .map(|w| (w / 2).max(Duration::from_millis(50)));
    let mut wedged: Option<String> = None;
    loop {
        let tick = async {
            match period {
                Some(p) => actix::clock::sleep(p).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => {
                if !stopping.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    notify.send("STOPPING=1");
                }
                return;
            }
            () = tick => {
                let limit = period.unwrap_or(Duration::MAX).max(HEARTBEAT * 2);
                match beats.iter().find(|(_, b)| b.age() > limit) {
                    None => {
                        if let Some(name) = wedged.take() {
                            tracing::warn!(bot = %name, "bot thread answers again; watchdog pings resume");
                        }
                        notify.send("WATCHDOG=1");
                    }
                    Some((name, b)) => {
                        if wedged.is_none() {
                            tracing::error!(bot = %name, silent = ?b.age(), "bot thread does not answer; no watchdog ping, so systemd can restart the process");
                        }
                        wedged = Some(name.clone());
                    }
                }
            }
        }
    }
}

/// Watches SIGINT and SIGTERM. The handlers are installed before this returns, so a signal that
/// arrives as soon as the bots are up is never met by the default action (termination without
/// draining the outbox).
pub(super) fn spawn_signal_watch(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot watch SIGINT and SIGTERM");
                return;
            }
        };
        actix::spawn(async move {
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                () = shutdown.cancelled() => return,
            }
            shutdown.cancel();
        });
    }
    #[cfg(not(unix))]
    actix::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            () = shutdown.cancelled() => return,
        }
        shutdown.cancel();
    });
}
