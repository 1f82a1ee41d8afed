//! Your own opsbot: everything the `opsbot` binary has (`run`, `check`, the console bot by
//! default, the config format, every transport this build has) plus your own handlers and
//! pollers, registered by name and configured from the bot's config.
//!
//! ```no_run
//! use opsbot::prelude::*;
//! use opsbot::settings::{FromSettings, SettingsError};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct HelloSettings {
//!     greeting: String,
//! }
//!
//! #[derive(Clone)]
//! struct Hello {
//!     greeting: String,
//! }
//!
//! impl FromSettings for Hello {
//!     type Settings = HelloSettings;
//!     fn from_settings(s: HelloSettings) -> std::result::Result<Self, SettingsError> {
//!         Ok(Hello { greeting: s.greeting })
//!     }
//! }
//!
//! impl Handler for Hello {
//!     const NAME: &'static str = "hello";
//!     const COMMANDS: &'static [Command] = &[Command::new("hello", "", "Say hello.")];
//!     async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
//!         cx.reply(self.greeting.clone());
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     opsbot_bots::App::new().handler::<Hello>("hello").main()
//! }
//! ```
//!
//! A bot enables it with `handlers = ["hello"]` and configures it in `[bot.handler.hello]`;
//! `check` validates that table with file, line and key path like every other key. Pollers
//! are enabled with `pollers = [...]` and configured in `[bot.poller.NAME]`, where `every_secs`,
//! `to`, `timeout_secs`, `retain_days` and `max_posts` are the framework's and the rest the
//! poller's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use opsbot::config::{BotConfig, Config, ConfigError, ConfigErrors};
use opsbot::settings::{FromSettings, SettingsError};
use opsbot::{Bot, BotBuilder, Destination, Handler, Poller, PollerOptions};
use opsbot_engine::cluster::ClusterConfig;
use opsbot_engine::config::EngineConfig;
use opsbot_engine::{Engine, EngineCommands};

/// Problems found in a settings table, with their key paths under the table.
type Problems = Vec<SettingsError>;
type AddHandler = Box<dyn Fn(BotBuilder, Option<&toml::Table>) -> Result<BotBuilder, Problems>>;
type AddPoller =
    Box<dyn Fn(BotBuilder, PollerOptions, Option<&toml::Table>) -> Result<BotBuilder, Problems>>;

struct HandlerEntry {
    name: &'static str,
    builtin: bool,
    add: AddHandler,
}

struct PollerEntry {
    name: &'static str,
    add: AddPoller,
}

/// A bot program: the registry of handlers and pollers a config can name, and the CLI.
pub struct App {
    handlers: Vec<HandlerEntry>,
    pollers: Vec<PollerEntry>,
    engine: Engine,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field(
                "handlers",
                &self.handlers.iter().map(|h| h.name).collect::<Vec<_>>(),
            )
            .field(
                "pollers",
                &self.pollers.iter().map(|p| p.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

/// The CLI.
#[derive(Debug, Parser)]
#[command(version, about = "A ChatOps bot that never goes quiet.")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the bots a config file defines.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file without connecting anywhere; prints every problem.
    Check {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run actions for the engine's of a cluster (`[cluster]`): no bot connects.
    Worker {
        /// The config file (TOML): its `[cluster]`, and its `[engine]` lists of what this
        /// worker may run.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The engine's audit trail.
    Audit {
        #[command(subcommand)]
        what: AuditCmd,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Check the audit trail's hash chain in the state store; names the first bad entry.
    Verify {
        /// The config file (TOML), for the state store's path.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// The framework's keys of a `[bot.poller.NAME]` table.
const POLLER_KEYS: &[&str] = &[
    "every_secs",
    "to",
    "timeout_secs",
    "retain_days",
    "max_posts",
];

impl App {
    /// An app with the built-in handlers (`help`, `status`, `whereareyou`, `whoami`, `echo`,
    /// `heal`,
    /// always on)
    /// and the library's optional ones (`boom`, `lines`, `dns`, `links`, and `engine`, the
    /// self-healing engine's commands) and pollers (`feed`,
    /// `http_json`).
    pub fn new() -> Self {
        use opsbot_handlers::{demo, echo, heal, help, status, whereareyou, whoami};
        let engine = Engine::new();
        let commands = EngineCommands::new(engine.clone());
        let mut app = Self {
            handlers: Vec::new(),
            pollers: Vec::new(),
            engine,
        }
        .builtin::<help::Help>("help")
        .builtin::<status::Status>("status")
        .builtin::<whereareyou::WhereAreYou>("whereareyou")
        .builtin::<whoami::WhoAmI>("whoami")
        .builtin::<echo::Echo>("echo")
        .builtin::<heal::Heal>("heal")
        .handler::<demo::Boom>("boom")
        .handler::<demo::Lines>("lines")
        .handler::<opsbot_handlers::dns::Dns>("dns")
        .handler::<opsbot_handlers::links::Links>("links")
        .poller::<opsbot_handlers::pollers::Feed>("feed")
        .poller::<opsbot_handlers::pollers::HttpJson>("http_json");
        app.handlers.push(HandlerEntry {
            name: "engine",
            builtin: false,
            add: Box::new(move |builder, table| {
                if table.is_some_and(|t| !t.is_empty()) {
                    return Err(vec![SettingsError::new(
                        "the engine's commands take no settings here; configure the engine in [engine]",
                    )]);
                }
                Ok(builder.handler(commands.clone()))
            }),
        });
        app
    }

    fn add_handler<H>(mut self, name: &'static str, builtin: bool) -> Self
    where
        H: Handler + FromSettings + Clone + Send + Sync,
    {
        assert!(
            self.handlers.iter().all(|h| h.name != name),
            "a handler named `{name}` is registered twice"
        );
        self.handlers.push(HandlerEntry {
            name,
            builtin,
            add: Box::new(|builder, table| {
                let handler = opsbot::settings::build::<H>(table)?;
                Ok(builder.handler(handler))
            }),
        });
        self
    }

    fn builtin<H>(self, name: &'static str) -> Self
    where
        H: Handler + FromSettings + Clone + Send + Sync,
    {
        self.add_handler::<H>(name, true)
    }

    /// Registers a handler a config enables as `name` (`handlers = ["name"]`), built from its
    /// `[bot.handler.name]` table.
    ///
    /// # Panics
    /// When `name` is already registered.
    pub fn handler<H>(self, name: &'static str) -> Self
    where
        H: Handler + FromSettings + Clone + Send + Sync,
    {
        self.add_handler::<H>(name, false)
    }

    /// Registers a poller a config enables as `name` (`pollers = ["name"]`), built from its
    /// `[bot.poller.name]` table.
    ///
    /// # Panics
    /// When `name` is already registered.
    pub fn poller<P>(mut self, name: &'static str) -> Self
    where
        P: Poller + FromSettings + Clone + Send + Sync,
    {
        assert!(
            self.pollers.iter().all(|p| p.name != name),
            "a poller named `{name}` is registered twice"
        );
        self.pollers.push(PollerEntry {
            name,
            add: Box::new(|builder, opts, table| {
                let poller = opsbot::settings::build::<P>(table)?;
                Ok(builder.poller(opts, move || poller.clone()))
            }),
        });
        self
    }

    /// The names a config may list in `handlers` (the built-in ones are always on).
    pub fn optional_handlers(&self) -> Vec<&'static str> {
        self.handlers
            .iter()
            .filter(|h| !h.builtin)
            .map(|h| h.name)
            .collect()
    }

    /// The names a config may list in `pollers`.
    pub fn poller_names(&self) -> Vec<&'static str> {
        self.pollers.iter().map(|p| p.name).collect()
    }

    /// Everything wrong with a config: the file's own checks, then transports, handler and
    /// poller names and their settings.
    pub fn check(&self, path: &Path) -> Result<Config, ConfigErrors> {
        self.check_loaded(Config::load_with(path, EXTENSIONS)?)
    }

    /// Checks a worker's config file (`opsbot worker`): as [`App::check`], except that it needs
    /// no `[[bot]]`, so a worker's file holds only what it uses (`[cluster]`, the `[engine]`
    /// lists, `[log]`), and none of the bots' secrets.
    pub fn check_worker(&self, path: &Path) -> Result<Config, ConfigErrors> {
        self.check_loaded(Config::load_without_bots(path, EXTENSIONS)?)
    }

    fn check_loaded(&self, config: Config) -> Result<Config, ConfigErrors> {
        // Pollers and handlers take the shared client as they are built: configure it first.
        if let Err(e) = opsbot::http::init(&config.http_client) {
            return Err(ConfigErrors(vec![config.error_at(
                "http_client".into(),
                e.to_string(),
                None,
            )]));
        }
        let mut config = config;
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        // Under a service manager a console bot reads /dev/null, stops at once and is
        // restarted, forever, saying nothing.
        let managed = std::env::var_os("NOTIFY_SOCKET").is_some();
        for bot in &config.bots {
            if managed && bot.transport.kind == "console" {
                warnings.push(config.error_at(
                    format!("{}.transport.kind", bot.key),
                    "a console bot under a service manager (NOTIFY_SOCKET is set) reads no terminal: it stops when its input ends, and the manager may restart it over and over".into(),
                    Some("give the bot a chat transport (irc, xmpp, webex), or run it from a terminal".into()),
                ));
            }
            errors.extend(opsbot_transports::check(&config, &bot.transport));
            let (bad, doubtful) = opsbot_transports::check_admins(&config, bot);
            errors.extend(bad);
            warnings.extend(doubtful);
            if let Err(e) = self.assemble(&config, bot, Bot::builder(&bot.name)) {
                errors.extend(e);
            }
        }
        errors.extend(engine_problems(&config));
        if let Some(table) = config.extensions.get("cluster")
            && let Err(problems) = ClusterConfig::from_table(table.clone())
        {
            errors.extend(settings_errors(&config, "cluster", problems));
        }
        if errors.is_empty() {
            config.warnings.extend(warnings);
            Ok(config)
        } else {
            let mut errors = ConfigErrors(errors);
            errors.sort();
            Err(errors)
        }
    }

    /// Adds `bot`'s handlers and pollers to `builder`, or lists what is wrong with them.
    fn assemble(
        &self,
        config: &Config,
        bot: &BotConfig,
        mut builder: BotBuilder,
    ) -> Result<BotBuilder, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let k = &bot.key;
        for h in self.handlers.iter().filter(|h| h.builtin) {
            match (h.add)(builder, None) {
                Ok(b) => builder = b,
                Err(_) => unreachable!("built-in handlers have no settings"),
            }
        }
        let known = self.optional_handlers();
        errors.extend(unlisted_tables(config, bot, "handler"));
        for name in &bot.handlers {
            let entry = self.handlers.iter().find(|h| h.name == name);
            match entry {
                Some(h) if !h.builtin => {
                    let table = bot
                        .handler_settings
                        .get(name)
                        .and_then(toml::Value::as_table);
                    match (h.add)(builder, table) {
                        Ok(b) => builder = b,
                        Err(problems) => {
                            let under = format!("{k}.handler.{name}");
                            errors.extend(settings_errors(config, &under, problems));
                            builder = Bot::builder(&bot.name);
                        }
                    }
                }
                _ => errors.push(config.error_at(
                    format!("{k}.handlers"),
                    if entry.is_some() {
                        format!("`{name}` is built in and always on; do not list it")
                    } else {
                        format!("unknown handler `{name}`")
                    },
                    Some(format!(
                        "handlers that can be enabled: {}",
                        known.join(", ")
                    )),
                )),
            }
        }
        errors.extend(unlisted_tables(config, bot, "poller"));
        for name in &bot.pollers {
            let key = format!("{k}.poller.{name}");
            let Some(p) = self.pollers.iter().find(|p| p.name == name) else {
                let names = self.poller_names();
                errors.push(config.error_at(
                    format!("{k}.pollers"),
                    format!("unknown poller `{name}`"),
                    Some(if names.is_empty() {
                        "this program has no pollers".into()
                    } else {
                        format!("pollers: {}", names.join(", "))
                    }),
                ));
                continue;
            };
            let mut table = bot
                .poller_settings
                .get(name)
                .and_then(toml::Value::as_table)
                .cloned()
                .unwrap_or_default();
            let (opts, problems) = poller_options(&mut table);
            if !problems.is_empty() {
                errors.extend(settings_errors(config, &key, problems));
                continue;
            }
            match (p.add)(builder, opts, Some(&table)) {
                Ok(b) => builder = b,
                Err(problems) => {
                    errors.extend(settings_errors(config, &key, problems));
                    builder = Bot::builder(&bot.name);
                }
            }
        }
        // Access lists name commands this bot has, and identities its transport can prove.
        let commands = builder.commands();
        for (name, access) in &bot.options.access {
            let key = format!("{k}.access.{name}");
            match commands
                .iter()
                .find(|c| c.name == name || c.aliases.contains(&name.as_str()))
            {
                None => {
                    let mut names: Vec<&str> = commands.iter().map(|c| c.name).collect();
                    names.sort_unstable();
                    errors.push(config.error_at(
                        key.clone(),
                        format!("`{name}` is not a command of this bot"),
                        Some(format!("its commands: {}", names.join(", "))),
                    ));
                }
                Some(c) if c.name != name => errors.push(config.error_at(
                    key.clone(),
                    format!("`{name}` is another name of `{}`", c.name),
                    Some(format!("write access.{}", c.name)),
                )),
                Some(c) if c.admin => errors.push(config.error_at(
                    key.clone(),
                    format!("`{name}` is for admins only already"),
                    None,
                )),
                Some(_) => {}
            }
            if let opsbot::options::Access::Only(list) = access {
                let identity = opsbot_transports::identity(&bot.transport.kind);
                for (i, entry) in list.iter().enumerate() {
                    if let Err((problem, hint)) = identity.check_entry(entry) {
                        errors.push(config.error_at(
                            format!("{key}[{i}]"),
                            format!("{problem} for a {} bot", bot.transport.kind),
                            Some(hint),
                        ));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(builder)
        } else {
            Err(errors)
        }
    }

    /// Builds every bot of a checked config.
    pub fn build(&self, config: &Config) -> anyhow::Result<Vec<Bot>> {
        config
            .bots
            .iter()
            .map(|b| {
                let mut builder = Bot::builder(&b.name).options(b.options.clone());
                if cluster_config(config).is_some_and(|c| c.active_standby) {
                    // Several processes may carry this bot: it speaks while this one holds
                    // its lease on the cluster's NATS.
                    builder = builder.lead(opsbot::lead::Lead::elected(process_id()));
                }
                builder = opsbot_transports::from_config(builder, &b.name, &b.transport)?;
                let builder = self
                    .assemble(config, b, builder)
                    .map_err(|e| anyhow::anyhow!("{}", ConfigErrors(e)))?;
                builder
                    .build()
                    .with_context(|| format!("{}: bot `{}`", config.path.display(), b.name))
            })
            .collect()
    }

    /// Runs every bot of a checked config until they stop.
    pub fn run(&self, config: &Config) -> anyhow::Result<()> {
        use std::io::IsTerminal;
        // A console bot's replies share the terminal with the log: keep the log to warnings
        // there unless asked for more.
        let console = config.bots.iter().any(|b| b.transport.kind == "console");
        let quiet = console && std::io::stderr().is_terminal();
        opsbot::logging::init_with(&config.log, if quiet { "warn" } else { "info" });
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        opsbot::http::init(&config.http_client)
            .with_context(|| format!("{}: http_client", config.path.display()))?;
        let bots = self.build(config)?;
        let mut options = opsbot::RunOptions::new();
        options.signals = true;
        options.notify = opsbot::systemd::Notify::from_env();
        options.http = config.http.clone();
        options.healing_log = healing_log(config, &bots);
        let mut audit = None;
        let mut engine_lead = None;
        if let Some(rules) = engine_config(config)
            .transpose()
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            let store = opsbot::store::Store::open(&state_path(config))
                .with_context(|| "the engine's state store")?;
            let voices = bots
                .iter()
                .map(|b| (b.name().to_owned(), b.voice()))
                .collect();
            let path = config.path.clone();
            let reload: opsbot_engine::driver::Reloader = Box::new(move || {
                let c = Config::load_with(&path, EXTENSIONS).map_err(|e| e.to_string())?;
                engine_config(&c)
                    .unwrap_or_else(|| Err("the file has no [engine] table any more".into()))
            });
            let healths: HashMap<String, opsbot::health::Health> = bots
                .iter()
                .map(|b| (b.name().to_owned(), b.health()))
                .collect();
            let heal: Arc<opsbot_engine::action::Healer> = Arc::new(move |bot: &str, sub: &str| {
                healths
                    .get(bot)
                    .ok_or_else(|| format!("no bot named {bot}"))?
                    .heal(sub, "the engine")
                    .map_err(|e| e.to_string())
            });
            audit = Some(opsbot_engine::audit::Audit::new(&store));
            let cluster = cluster_config(config);
            if let Some(c) = cluster.as_ref().filter(|c| c.worker) {
                start_worker(c.clone(), rules.allowed.clone(), heal.clone())?;
            }
            if cluster.as_ref().is_some_and(|c| c.active_standby) {
                // Several processes run this engine: one decides, where its bots speak.
                engine_lead = Some(opsbot::lead::Lead::elected(process_id()));
            }
            let wiring = opsbot_engine::driver::Wiring {
                store,
                voices,
                heal,
                reload,
                cluster,
                lead: engine_lead.clone(),
            };
            self.engine
                .start(rules, wiring)
                .context("starting the engine")?;
            match &config.http {
                Some(_) => options.api.push(self.engine.mount()),
                None => tracing::warn!(
                    "[engine] without [http]: alerts and events cannot reach it (add an [http] table)"
                ),
            }
        }
        if console {
            if !std::io::stdin().is_terminal() {
                tracing::info!(
                    "the console bot reads standard input, which is not a terminal: it stops \
                     when that input ends"
                );
            }
            let logs =
                if quiet && config.log.level.is_none() && std::env::var_os("RUST_LOG").is_none() {
                    "; the log shows warnings here (more: RUST_LOG=info)"
                } else {
                    ""
                };
            eprintln!("opsbot console: type !help (end with Ctrl-D){logs}");
        }
        #[cfg(feature = "cluster")]
        let elector = match cluster_config(config).filter(|c| c.active_standby) {
            Some(c) => Some(start_elector(c, &bots, engine_lead, audit)?),
            None => None,
        };
        #[cfg(not(feature = "cluster"))]
        let _ = (audit, engine_lead);
        let ran = opsbot::run_process(bots, options).context("running the bots");
        #[cfg(feature = "cluster")]
        if let Some(elector) = elector {
            // Every bot has said its last: a standby may take over at its next look.
            elector.stop(std::time::Duration::from_secs(3));
        }
        ran
    }

    /// The program: `run --config FILE`, `check --config FILE`, or with no arguments a console
    /// bot with every built-in handler. Exits 0 after a graceful stop, 2 for a bad config, 1
    /// when a bot failed.
    pub fn main(self) -> ExitCode {
        opsbot::tls::install_default_provider();
        // Named as the program was started (`opsbot`, or a bot program of one's own), never as
        // the crate that holds the CLI.
        use clap::{CommandFactory, FromArgMatches};
        let name = std::env::args_os()
            .next()
            .map(PathBuf::from)
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "opsbot".into());
        let name: &'static str = Box::leak(name.into_boxed_str()); // once per process
        let matches = Cli::command().name(name).get_matches();
        let cli = match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        };
        let result = match cli.command {
            None => self.run(&Config::console_default()),
            Some(Cmd::Check { config }) => match self.check(&config) {
                Ok(c) => {
                    for w in &c.warnings {
                        eprintln!("warning: {w}");
                    }
                    println!(
                        "{}: OK ({} bot{})",
                        config.display(),
                        c.bots.len(),
                        if c.bots.len() == 1 { "" } else { "s" }
                    );
                    return ExitCode::SUCCESS;
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            },
            Some(Cmd::Audit {
                what: AuditCmd::Verify { config },
            }) => match Config::load_with(&config, EXTENSIONS) {
                Ok(c) => {
                    let path = state_path(&c);
                    let store = match opsbot::store::Store::open(&path) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("{e}");
                            return ExitCode::FAILURE;
                        }
                    };
                    return match opsbot_engine::audit::Audit::new(&store).verify() {
                        Ok(n) => {
                            println!("{}: {n} audit entries, the chain holds", path.display());
                            ExitCode::SUCCESS
                        }
                        Err(b) => {
                            eprintln!("{}: {b}", path.display());
                            ExitCode::FAILURE
                        }
                    };
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            },
            Some(Cmd::Worker { config }) => match self.check_worker(&config) {
                Ok(c) => worker(&c),
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            },
            Some(Cmd::Run { config }) => match self.check(&config) {
                Ok(c) => self.run(&c),
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            },
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("opsbot: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Top-level tables of the config that belong to crates built on the framework.
const EXTENSIONS: &[&str] = &["engine", "cluster"];

/// The checked `[cluster]` table, if the file has one (`check` has passed).
fn cluster_config(config: &Config) -> Option<ClusterConfig> {
    let table = config.extensions.get("cluster")?.clone();
    ClusterConfig::from_table(table).ok()
}

/// This process, as the bots' leases name their holder: the host, the process id, and four hex
/// digits that tell apart two processes that were given the same id (PID 1 in containers).
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
fn process_id() -> String {
    static ID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "opsbot".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{host}:{}-{:04x}", std::process::id(), nanos & 0xffff)
    });
    ID.clone()
}

/// Starts electing this process for its bots' leads on the cluster's NATS.
#[cfg(feature = "cluster")]
fn start_elector(
    cluster: ClusterConfig,
    bots: &[Bot],
    engine: Option<opsbot::lead::Lead>,
    audit: Option<opsbot_engine::audit::Audit>,
) -> anyhow::Result<opsbot_engine::cluster::Elector> {
    let leads = bots
        .iter()
        .map(|b| (b.name().to_owned(), b.lead()))
        .collect();
    opsbot_engine::cluster::spawn_elector(cluster, process_id(), leads, engine, audit)
        .context("starting the bots' leases")
}

/// A name for this worker: the host's, and the process's id.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
fn worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// Runs actions from the cluster on a thread of its own, for the life of the process.
fn start_worker(
    cluster: ClusterConfig,
    allowed: opsbot_engine::action::Allowed,
    heal: Arc<opsbot_engine::action::Healer>,
) -> anyhow::Result<()> {
    #[cfg(feature = "cluster")]
    {
        opsbot_engine::cluster::spawn_worker(cluster, worker_id(), allowed, heal)
            .context("starting the worker")?;
        Ok(())
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = (cluster, allowed, heal);
        anyhow::bail!("this opsbot was built without the `cluster` feature")
    }
}

/// `opsbot worker`: runs actions from the cluster until stopped; no bot connects.
fn worker(config: &Config) -> anyhow::Result<()> {
    opsbot::logging::init_with(&config.log, "info");
    opsbot::http::init(&config.http_client)
        .with_context(|| format!("{}: http_client", config.path.display()))?;
    let cluster = cluster_config(config).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: a worker needs a [cluster] table",
            config.path.display()
        )
    })?;
    let allowed = match engine_config(config) {
        Some(Ok(e)) => e.allowed,
        Some(Err(e)) => anyhow::bail!("{e}"),
        None => opsbot_engine::action::Allowed::default(),
    };
    // A worker has no bots of its own to heal.
    let heal: Arc<opsbot_engine::action::Healer> =
        Arc::new(|bot: &str, _: &str| Err(format!("a worker runs no bot {bot}")));
    start_worker(cluster, allowed, heal)?;
    tracing::info!("worker started; it runs until SIGTERM");
    opsbot_engine::cluster::wait_for_stop()?;
    Ok(())
}

/// The state store's path: `[state] path`, else the default.
fn state_path(config: &Config) -> PathBuf {
    config
        .state_path
        .clone()
        .unwrap_or_else(opsbot::bot::default_state_path)
}

/// The checked `[engine]` table, if the file has one.
fn engine_config(config: &Config) -> Option<Result<EngineConfig, String>> {
    let table = config.extensions.get("engine")?.clone();
    let bots: Vec<&str> = config.bots.iter().map(|b| b.name.as_str()).collect();
    Some(EngineConfig::from_table(table, &bots).map_err(|problems| {
        settings_errors(config, "engine", problems)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }))
}

/// What is wrong with the `[engine]` table, and with bots that list the `engine` handler
/// without one.
fn engine_problems(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    match config.extensions.get("engine") {
        Some(table) => {
            let bots: Vec<&str> = config.bots.iter().map(|b| b.name.as_str()).collect();
            if let Err(problems) = EngineConfig::from_table(table.clone(), &bots) {
                errors.extend(settings_errors(config, "engine", problems));
            }
        }
        None => {
            for b in &config.bots {
                if b.handlers.iter().any(|h| h == "engine") {
                    errors.push(
                        config.error_at(
                            format!("{}.handlers", b.key),
                            "the `engine` handler needs an [engine] table".into(),
                            Some(
                                "add [engine] with its routes and rules (see examples/alerts.toml)"
                                    .into(),
                            ),
                        ),
                    );
                }
            }
        }
    }
    errors
}

/// The process's persisted healing log, in the state store (`[state] path`, else the default
/// path). A store that cannot be opened (another process holds it) leaves the log in memory
/// only, with a warning: the bots run all the same.
fn healing_log(config: &Config, bots: &[Bot]) -> Option<opsbot::healing_log::HealingLog> {
    let path = config
        .state_path
        .clone()
        .unwrap_or_else(opsbot::bot::default_state_path);
    let opened = opsbot::store::Store::open(&path)
        .map_err(|e| e.to_string())
        .and_then(|store| {
            // Every bot shows what happened to the file, not only those with pollers.
            if let Some(trouble) = store.trouble() {
                for b in bots {
                    b.health().note_store("started afresh", trouble, false);
                }
            }
            opsbot::healing_log::HealingLog::open(store, config.healing_log_entries)
                .map_err(|e| e.to_string())
        });
    match opened {
        Ok(log) => Some(log),
        Err(e) => {
            tracing::warn!(error = %e, "the healing log is kept in memory only");
            // The bots run as they are; only the healing log's history is lost at exit.
            for b in bots {
                b.health().note_store(
                    "healing log in memory",
                    &format!("{e}; the healing log is kept in memory"),
                    false,
                );
            }
            None
        }
    }
}

/// Takes the framework's keys out of a poller's table; the rest are the poller's own.
fn poller_options(table: &mut toml::Table) -> (PollerOptions, Problems) {
    let mut opts = PollerOptions::default();
    let mut problems = Vec::new();
    let mut secs = |table: &mut toml::Table, key: &str, scale: f64| -> Option<Duration> {
        let v = table.remove(key)?;
        let n = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
        match n {
            Some(n) if n.is_finite() && n > 0.0 && n * scale <= opsbot::options::MAX_SECS => {
                Some(Duration::from_secs_f64(n * scale))
            }
            _ => {
                problems.push(problem(
                    key.to_owned(),
                    format!("{} is not a positive duration of at most a year", show(&v)),
                ));
                None
            }
        }
    };
    if let Some(d) = secs(table, "every_secs", 1.0) {
        opts.every = d;
    }
    if let Some(d) = secs(table, "timeout_secs", 1.0) {
        opts.timeout = d;
    }
    if let Some(d) = secs(table, "retain_days", 86_400.0) {
        opts.retain = d;
    }
    if let Some(v) = table.remove("max_posts") {
        match v.as_integer() {
            Some(n @ 1..=100) => opts.max_posts = n as usize,
            _ => problems.push(problem(
                "max_posts".into(),
                format!("{} is not 1 to 100", show(&v)),
            )),
        }
    }
    match table.remove("to") {
        None => problems.push(problem(
            "to".into(),
            "a poller needs somewhere to post: `to = [\"#ops\"]` (a person: \"@name\")".into(),
        )),
        Some(toml::Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str().map(str::trim) {
                    Some(s) if s.len() > 1 && s.starts_with('@') => {
                        opts.post_to.push(Destination::user(&s[1..]));
                    }
                    Some(s) if !s.is_empty() && !s.starts_with('@') => {
                        opts.post_to.push(Destination::room(s));
                    }
                    _ => problems.push(problem(
                        format!("to[{i}]"),
                        format!("{} is not a room or @person", show(item)),
                    )),
                }
            }
        }
        Some(v) => problems.push(problem(
            "to".into(),
            format!("expected a list of rooms (and @people), found {}", show(&v)),
        )),
    }
    debug_assert!(POLLER_KEYS.iter().all(|k| !table.contains_key(*k)));
    (opts, problems)
}

/// A value as the file would show it (scalars), else its type.
fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => format!("a {}", other.type_str()),
    }
}

/// Tables of settings for handlers or pollers (`what`) that the bot's list does not name.
fn unlisted_tables(config: &Config, bot: &BotConfig, what: &str) -> Vec<ConfigError> {
    let (list, tables) = match what {
        "handler" => (&bot.handlers, &bot.handler_settings),
        _ => (&bot.pollers, &bot.poller_settings),
    };
    tables
        .keys()
        .filter(|name| !list.contains(name))
        .map(|name| {
            config.error_at(
                format!("{}.{what}.{name}", bot.key),
                format!("settings for `{name}`, which `{what}s` does not list"),
                Some(format!("add \"{name}\" to {what}s, or remove the table")),
            )
        })
        .collect()
}

/// A handler's or poller's settings problems as config errors at their keys under `under`
/// (`bot[0].handler.dns`).
fn settings_errors<'a>(
    config: &'a Config,
    under: &str,
    problems: Problems,
) -> impl Iterator<Item = ConfigError> + 'a {
    let under = under.to_owned();
    problems.into_iter().map(move |p| {
        let key = match p.key() {
            "" => under.clone(),
            key => format!("{under}.{key}"),
        };
        config.error_at(key, p.message, p.hint)
    })
}

/// A problem with the key `key` of a poller's table.
fn problem(key: String, message: String) -> SettingsError {
    SettingsError::at(key, message)
}
