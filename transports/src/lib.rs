//! Chat transports for opsbot, one module per chat service.
//!
//! Every transport implements [`opsbot::transport::Transport`]: one session of one connection.
//! Reconnecting, backoff and pacing are the framework's, so a transport only speaks its protocol.
//! Heavy protocols come behind cargo features (`irc`, `xmpp`, `webex`), so that a console-only build stays small.
//!
//! [`check`] validates a `[bot.transport]` section without connecting, and [`from_config`] turns
//! it into a transport: swapping protocols is a one-line config change.

#[cfg(any(
    feature = "irc",
    feature = "xmpp",
    feature = "webex",
    feature = "matrix"
))]
// Each piece serves some of the transports: a build with fewer leaves some unused.
#[cfg_attr(
    not(all(feature = "irc", feature = "xmpp", feature = "webex")),
    allow(dead_code)
)]
mod common;
pub mod console;
#[cfg(feature = "irc")]
pub mod irc;
#[cfg(feature = "matrix")]
pub mod matrix;
#[cfg(any(feature = "irc", feature = "xmpp"))]
#[cfg_attr(not(all(feature = "irc", feature = "xmpp")), allow(dead_code))]
mod membership;
#[cfg(feature = "webex")]
pub mod webex;
#[cfg(feature = "xmpp")]
pub mod xmpp;

use std::path::Path;

use opsbot::BotBuilder;
use opsbot::config::{BotConfig, Config, ConfigError, TransportConfig};
#[cfg(any(
    feature = "irc",
    feature = "xmpp",
    feature = "webex",
    feature = "matrix"
))]
use opsbot::settings::SettingsError;
use opsbot::transport::Identity;

/// The transport kinds this build knows.
pub const KINDS: &[&str] = &[
    "console",
    #[cfg(feature = "irc")]
    "irc",
    #[cfg(feature = "xmpp")]
    "xmpp",
    #[cfg(feature = "webex")]
    "webex",
    #[cfg(feature = "matrix")]
    "matrix",
];

fn error(file: &Path, key: String, message: String, hint: Option<String>) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        key,
        line: None,
        message,
        hint,
    }
}

/// A transport section, read and checked: which transport, with its settings.
enum Section {
    Console,
    #[cfg(feature = "irc")]
    Irc(irc::IrcConfig),
    #[cfg(feature = "xmpp")]
    Xmpp(xmpp::XmppConfig),
    #[cfg(feature = "webex")]
    Webex(webex::WebexConfig),
    #[cfg(feature = "matrix")]
    Matrix(matrix::MatrixConfig),
}

/// Reads a transport section once: its kind, its settings (serde, with key paths) and their
/// problems, all of them, or the section.
fn read(file: &Path, t: &TransportConfig) -> Result<Section, Vec<ConfigError>> {
    match t.kind.as_str() {
        "console" if t.settings.is_empty() => Ok(Section::Console),
        "console" => Err(t
            .settings
            .keys()
            .map(|k| {
                error(
                    file,
                    format!("{}.{k}", t.key),
                    format!("unknown field `{k}`: the console transport has no settings"),
                    None,
                )
            })
            .collect()),
        #[cfg(feature = "irc")]
        "irc" => checked(file, t, irc::IrcConfig::problems).map(Section::Irc),
        #[cfg(feature = "xmpp")]
        "xmpp" => checked(file, t, xmpp::XmppConfig::problems).map(Section::Xmpp),
        #[cfg(feature = "webex")]
        "webex" => checked(file, t, webex::WebexConfig::problems).map(Section::Webex),
        #[cfg(feature = "matrix")]
        "matrix" => checked(file, t, matrix::MatrixConfig::problems).map(Section::Matrix),
        other => Err(vec![error(
            file,
            format!("{}.kind", t.key),
            format!("unknown transport kind `{other}`"),
            Some(format!("this build knows: {}", KINDS.join(", "))),
        )]),
    }
}

/// Reads a transport's settings as `T` and lists their problems, keys prefixed with the
/// section's.
#[cfg(any(
    feature = "irc",
    feature = "xmpp",
    feature = "webex",
    feature = "matrix"
))]
fn checked<T: serde::de::DeserializeOwned>(
    file: &Path,
    t: &TransportConfig,
    problems: fn(&T) -> Vec<SettingsError>,
) -> Result<T, Vec<ConfigError>> {
    let cfg: T =
        serde_path_to_error::deserialize(toml::Value::Table(t.settings.clone())).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." {
                t.key.clone()
            } else {
                format!("{}.{path}", t.key)
            };
            let (message, hint) = opsbot::config::explain(&path, e.inner().message());
            vec![error(file, key, message, hint)]
        })?;
    let found: Vec<ConfigError> = problems(&cfg)
        .into_iter()
        .map(|p| {
            let key = match p.key() {
                "" => t.key.clone(),
                k => format!("{}.{k}", t.key),
            };
            error(file, key, p.message, p.hint)
        })
        .collect();
    if found.is_empty() {
        Ok(cfg)
    } else {
        Err(found)
    }
}

/// Checks a transport section of `config` without connecting; returns every problem, each
/// with the file, its line, the key path and a hint where one helps, as the framework's own.
pub fn check(config: &Config, t: &TransportConfig) -> Vec<ConfigError> {
    match read(&config.path, t) {
        Ok(_) => Vec::new(),
        Err(found) => found.into_iter().map(|e| located(config, e)).collect(),
    }
}

/// `e` with its line in `config`'s file, when the key can be found there.
fn located(config: &Config, e: ConfigError) -> ConfigError {
    config.error_at(e.key, e.message, e.hint)
}

/// What the sender ids of a transport kind are (how its admin entries match).
pub fn identity(kind: &str) -> Identity {
    match kind {
        "irc" => Identity::Mask,
        _ => Identity::Address,
    }
}

/// Checks a bot's admin entries against what its transport can prove: answers the errors and
/// the warnings. On XMPP and Webex an entry is a whole address (an IRC mask there could match
/// a room nick anyone can choose); on IRC a mask that trusts only the nick is a warning; on
/// the console the only user is `console`.
pub fn check_admins(config: &Config, bot: &BotConfig) -> (Vec<ConfigError>, Vec<ConfigError>) {
    let file = config.path.as_path();
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let kind = bot.transport.kind.as_str();
    for (i, entry) in bot.options.admins.iter().enumerate() {
        let key = format!("{}.admins[{i}]", bot.key);
        if kind == "console" {
            if entry != "console" {
                warnings.push(error(
                    file,
                    key,
                    format!("`{entry}` never matches on the console, whose one user is `console`"),
                    None,
                ));
            }
            continue;
        }
        match identity(kind).check_entry(entry) {
            Ok(None) => {}
            Ok(Some(warning)) => warnings.push(error(file, key, warning, None)),
            Err((problem, hint)) => errors.push(error(
                file,
                key,
                format!("{problem} for a {kind} bot"),
                Some(hint),
            )),
        }
    }
    let all = |v: Vec<ConfigError>| v.into_iter().map(|e| located(config, e)).collect();
    (all(errors), all(warnings))
}

/// Gives `builder` the transport described by `t` (read as [`check`] reads it: a section
/// with problems gives the first of them).
pub fn from_config(
    builder: BotBuilder,
    name: &str,
    t: &TransportConfig,
) -> Result<BotBuilder, ConfigError> {
    let section = read(Path::new("<config>"), t).map_err(|mut found| found.remove(0))?;
    Ok(match section {
        Section::Console => builder.transport(console::Console::stdio(name)),
        #[cfg(feature = "irc")]
        Section::Irc(cfg) => builder.transport(irc::Irc::new(cfg)),
        #[cfg(feature = "xmpp")]
        Section::Xmpp(cfg) => builder.transport(xmpp::Xmpp::new(cfg)),
        #[cfg(feature = "webex")]
        Section::Webex(cfg) => builder.transport(webex::Webex::new(cfg)),
        // The stores go beside the bot's state file unless the section names a folder.
        #[cfg(feature = "matrix")]
        Section::Matrix(cfg) => {
            let state = opsbot::bot::default_state_path();
            let dir = state.parent().unwrap_or(std::path::Path::new("."));
            builder.transport(matrix::Matrix::new(cfg, dir))
        }
    })
}

#[cfg(all(test, feature = "irc", feature = "xmpp"))]
mod tests {
    /// The timings IRC and XMPP share are read the same way, with the same defaults and the
    /// same limits, so one config reads the same on both.
    #[test]
    fn irc_and_xmpp_read_their_shared_timings_alike() {
        let irc = |t: &str| -> crate::irc::IrcConfig {
            toml::from_str(&format!("server = \"irc.example.org\"\nnick = \"b\"\n{t}")).unwrap()
        };
        let xmpp = |t: &str| -> crate::xmpp::XmppConfig {
            toml::from_str(&format!("jid = \"b@example.org\"\npassword = \"pw\"\n{t}")).unwrap()
        };
        let (i, x) = (irc(""), xmpp(""));
        let timings = |i: &crate::irc::IrcConfig, x: &crate::xmpp::XmppConfig| {
            [
                (i.ping_interval(), x.ping_interval()),
                (i.ping_timeout(), x.ping_timeout()),
                (i.connect_timeout(), x.connect_timeout()),
                (i.rejoin_delay(), x.rejoin_delay()),
                (i.join_timeout(), x.join_timeout()),
                (i.join_retry(), x.join_retry()),
            ]
        };
        for (a, b) in timings(&i, &x) {
            assert_eq!(a, b);
        }
        let set = "ping_interval_secs = 7\nping_timeout_secs = 8\nconnect_timeout_secs = 9\n\
                   rejoin_delay_secs = 3\njoin_timeout_secs = 4\njoin_retry_secs = 5\n";
        for (a, b) in timings(&irc(set), &xmpp(set)) {
            assert_eq!(a, b);
        }
        let zero = "rejoin_delay_secs = 0\njoin_timeout_secs = 0\n";
        let keys = |p: Vec<opsbot::settings::SettingsError>| {
            p.iter().map(|p| p.key().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(keys(irc(zero).problems()), keys(xmpp(zero).problems()));
        assert_eq!(keys(irc(zero).problems()).len(), 2);
    }

    /// A transport's problem reaches the user like the framework's own: the file, the line,
    /// the whole key path and the hint.
    #[test]
    fn a_transport_problem_has_its_line_key_and_hint() {
        let text = "[[bot]]\nname = \"ops\"\n[bot.transport]\nkind = \"irc\"\n\
                    server = \"irc.example.org\"\nnick = \"ops\"\nca_file = \"/no/such/ca.pem\"\n";
        let config =
            opsbot::config::Config::from_str(std::path::Path::new("bots.toml"), text).unwrap();
        let errors = super::check(&config, &config.bots[0].transport);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!(e.key, "bot[0].transport.ca_file");
        assert_eq!(e.line, Some(7));
        assert!(e.message.contains("/no/such/ca.pem is not a readable file"));
        assert!(e.hint.as_deref().is_some_and(|h| h.contains("PEM")), "{e}");
    }
}
