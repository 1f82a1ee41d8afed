//! A real Synapse homeserver for the tests: installed from PyPI into a virtual environment by
//! `scripts/test` (`$OPSBOT_SYNAPSE`, else `target/synapse-venv`), started by each test on a
//! free loopback port with SQLite, registration by shared secret only, and no federation.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command as OsCommand, Stdio};

use super::{Daemon, free_port};

/// The server name every user id ends with.
pub const SERVER_NAME: &str = "localhost";
/// The shared secret that registers users.
const SECRET: &str = "opsbot-test-registration";

/// The virtual environment Synapse is installed in.
pub fn venv() -> PathBuf {
    let dir = std::env::var_os("OPSBOT_SYNAPSE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/synapse-venv"),
        PathBuf::from,
    );
    assert!(
        dir.join("bin/python").exists(),
        "Synapse is not installed in {}: run scripts/test, which installs it",
        dir.display()
    );
    dir
}

pub struct Synapse {
    pub port: u16,
    pub dir: tempfile::TempDir,
    process: Daemon,
    /// Settings appended to the homeserver's config (YAML).
    extra: String,
}

impl Synapse {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts Synapse with `extra` appended to its config. Each of its rate limits is raised
    /// unless `extra` sets it.
    pub fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self {
            port: free_port(),
            dir,
            process: Daemon::default(),
            extra: extra.to_owned(),
        };
        s.write_config();
        let out = OsCommand::new(venv().join("bin/python"))
            .args(["-m", "synapse.app.homeserver", "--generate-keys", "-c"])
            .arg(s.config())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "synapse --generate-keys: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        s.launch();
        s
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("homeserver.yaml")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        // Each of Synapse's limits is raised unless `extra` sets it.
        let raised = [
            (
                "rc_message",
                "rc_message:\n  per_second: 1000\n  burst_count: 1000\n",
            ),
            (
                "rc_login",
                "rc_login:\n  address:\n    per_second: 1000\n    burst_count: 1000\n  account:\n    per_second: 1000\n    burst_count: 1000\n  failed_attempts:\n    per_second: 1000\n    burst_count: 1000\n",
            ),
            (
                "rc_joins",
                "rc_joins:\n  local:\n    per_second: 1000\n    burst_count: 1000\n",
            ),
        ];
        let limits: String = raised
            .iter()
            .filter(|(key, _)| !self.extra.contains(key))
            .map(|(_, yaml)| *yaml)
            .collect();
        let config = format!(
            r#"server_name: "{SERVER_NAME}"
pid_file: {d}/homeserver.pid
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: {d}/homeserver.db
log_config: {d}/log.yaml
media_store_path: {d}/media
registration_shared_secret: "{SECRET}"
enable_registration: false
report_stats: false
macaroon_secret_key: "opsbot-test-macaroon"
form_secret: "opsbot-test-form"
signing_key_path: {d}/signing.key
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
enable_metrics: false
{limits}{extra}
"#,
            port = self.port,
            extra = self.extra,
        );
        std::fs::write(self.config(), config).unwrap();
        let log = format!(
            "version: 1\nformatters:\n  precise:\n    format: '%(asctime)s %(name)s %(levelname)s %(message)s'\n\
             handlers:\n  file:\n    class: logging.FileHandler\n    formatter: precise\n    filename: {d}/homeserver.log\n\
             root:\n  level: INFO\n  handlers: [file]\ndisable_existing_loggers: false\n"
        );
        std::fs::write(self.dir.path().join("log.yaml"), log).unwrap();
    }

    fn launch(&mut self) {
        let log = self.dir.path().join("homeserver.log");
        let stdout = std::fs::File::create(self.dir.path().join("stdout.log")).unwrap();
        let child = OsCommand::new(venv().join("bin/python"))
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(self.config())
            .stdout(stdout.try_clone().unwrap())
            .stderr(stdout)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.process.start(child, &[self.port], "synapse", &log);
    }

    /// Creates a user (not an admin) through the shared-secret registration.
    pub fn register(&self, user: &str, password: &str) {
        let out = OsCommand::new(venv().join("bin/register_new_matrix_user"))
            .args(["-u", user, "-p", password, "--no-admin", "-k", SECRET])
            .arg(self.url())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "register_new_matrix_user {user}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL: every request fails, and the sync connection drops.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port with the same database.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("homeserver.log")).unwrap_or_default()
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        self.process.kill();
    }
}
