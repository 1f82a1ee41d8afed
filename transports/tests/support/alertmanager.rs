//! A real Alertmanager (Debian's `prometheus-alertmanager`) on loopback ports of its own, with a
//! webhook receiver that is the bot.

use std::process::{Command, Stdio};

use super::http::http;
use super::{Daemon, free_port, which};

/// A running Alertmanager.
pub struct Alertmanager {
    pub port: u16,
    pub cluster_port: u16,
    dir: tempfile::TempDir,
    process: Daemon,
}

impl Alertmanager {
    /// Starts one that sends every alert, grouped by `alertname`, to `webhook` with `token`,
    /// after `group_wait` (a second); `peers` are the cluster addresses of others of an HA pair.
    pub fn start(webhook: &str, token: &str, peers: &[u16]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "route:\n  receiver: opsbot\n  group_by: ['alertname']\n  group_wait: 1s\n  \
             group_interval: 2s\n  repeat_interval: 1h\nreceivers:\n  - name: opsbot\n    \
             webhook_configs:\n      - url: '{webhook}'\n        send_resolved: true\n        \
             http_config:\n          authorization:\n            type: Bearer\n            \
             credentials: '{token}'\n"
        );
        let file = dir.path().join("alertmanager.yml");
        std::fs::write(&file, config).unwrap();
        let port = free_port();
        let cluster_port = free_port();
        let log = dir.path().join("alertmanager.log");
        let mut cmd = Command::new(which("prometheus-alertmanager"));
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--cluster.listen-address=127.0.0.1:{cluster_port}"))
            .arg(format!(
                "--cluster.advertise-address=127.0.0.1:{cluster_port}"
            ))
            // Replicas whose gossip lags (it goes every 30 s) and that do not wait for each
            // other: each sends what it has, as a pair does while partitioned, and the
            // receiver gets the duplicates it must recognise.
            .arg("--cluster.peer-timeout=1ms")
            .arg("--cluster.gossip-interval=30s")
            .arg("--cluster.probe-interval=1m")
            .arg("--cluster.settle-timeout=1s")
            .arg("--log.level=debug");
        for p in peers {
            cmd.arg(format!("--cluster.peer=127.0.0.1:{p}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus-alertmanager");
        let mut process = Daemon::default();
        process.start(child, &[port], "prometheus-alertmanager", &log);
        Self {
            port,
            cluster_port,
            dir,
            process,
        }
    }

    /// Posts alerts to its v2 API, as Prometheus does (`alerts` is a JSON array).
    pub fn post_alerts(&self, alerts: &str) {
        let (status, body) = http(
            self.port,
            "POST",
            "/api/v2/alerts",
            &[("Content-Type", "application/json")],
            alerts.as_bytes(),
        );
        assert_eq!(status, 200, "Alertmanager refused the alerts: {body}");
    }

    /// How many webhook notifications it has sent (its own metric).
    pub fn notifications_sent(&self) -> u64 {
        let (_, body) = http(self.port, "GET", "/metrics", &[], b"");
        body.lines()
            .filter(|l| {
                l.starts_with("alertmanager_notifications_total")
                    && l.contains("integration=\"webhook\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }
}
