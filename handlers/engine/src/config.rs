//! The `[engine]` table: routes, rules, approver lists, what actions may reach, and the
//! secrets of the event endpoints. Checked whole, like the rest of the config: every problem
//! is reported with its key (`rule[2].args[0]`) and, where one can be said, what to write.
//!
//! ```toml
//! [engine]
//! bot = "ops"                             # posts notifications and approval requests
//! alertmanager_token = "${AM_TOKEN}"      # Alertmanager's http_config.authorization
//! programs = ["/usr/bin/systemctl"]       # what `command` actions may run
//! hosts = ["hooks.example.com"]           # what `http` actions may call
//! approvers.oncall = ["alice@example.com", "bob@example.com"]
//!
//! [[engine.route]]
//! match = ['severity=~"page|critical"']
//! room = "#ops"
//!
//! [[engine.rule]]
//! name = "restart-web"
//! match = ['alertname="WebDown"', 'service=~".+"']
//! action = { kind = "command", program = "/usr/bin/systemctl", args = ["restart", "{service}"] }
//! target = "{service}"
//! approval = "one"
//! approvers = "oncall"
//! cooldown = "10m"
//! max_per_hour = 3
//!
//! [engine.kubernetes]                     # what `kubernetes` actions may touch
//! namespaces = ["prod"]
//! nodes = ["worker-*"]
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use opsbot::config::Secret;
use opsbot::settings::SettingsError;
use serde::Deserialize;

use crate::action::{ActionSpec, Allowed};
use crate::kubernetes::{KubeSettings, MAX_REPLICAS, Verb};
use crate::rules::{Matchers, Template};

/// The longest time limit of an action, an approval or a cool-down.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    bot: Option<String>,
    alertmanager_token: Option<String>,
    #[serde(default)]
    approvers: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    programs: Vec<String>,
    #[serde(default)]
    hosts: Vec<String>,
    approval_timeout: Option<String>,
    storm_lines_per_minute: Option<usize>,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    source: BTreeMap<String, RawSource>,
    kubernetes: Option<RawKube>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKube {
    kubeconfig: Option<String>,
    context: Option<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    nodes: Vec<String>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default, rename = "match")]
    matchers: Vec<String>,
    bot: Option<String>,
    room: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(rename = "match")]
    matchers: Vec<String>,
    action: RawAction,
    target: Option<String>,
    approval: Option<String>,
    approvers: Option<String>,
    cooldown: Option<String>,
    max_per_hour: Option<u32>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    safe_to_repeat: bool,
    room: Option<String>,
    verify: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
enum RawAction {
    Command {
        program: String,
        #[serde(default)]
        args: Vec<String>,
        timeout: Option<String>,
    },
    Http {
        #[serde(default = "post")]
        method: String,
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        body: Option<String>,
    },
    Heal {
        bot: Option<String>,
        subsystem: String,
    },
    Kubernetes {
        verb: Verb,
        deployment: Option<String>,
        pod: Option<String>,
        node: Option<String>,
        namespace: Option<String>,
        replicas: Option<u32>,
    },
}

fn post() -> String {
    "POST".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    secret: String,
    room: Option<String>,
}

/// How many people must approve a rule's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    /// It runs at once.
    None,
    /// One person from the list.
    One,
    /// Two different people from the list.
    Two,
}

impl Approval {
    /// How many approvals it takes.
    pub fn needed(self) -> usize {
        match self {
            Approval::None => 0,
            Approval::One => 1,
            Approval::Two => 2,
        }
    }
}

/// Where notifications of matching alerts go.
#[derive(Clone, Debug)]
pub struct Route {
    /// Which alerts.
    pub matchers: Matchers,
    /// The bot that posts them.
    pub bot: String,
    /// The room.
    pub room: String,
}

/// What to do about matching alerts.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its name (unique).
    pub name: String,
    /// Which alerts.
    pub matchers: Matchers,
    /// The action.
    pub action: ActionSpec,
    /// What the action acts on, for the cool-down (`{service}`); the rule's name if unset.
    pub target: Option<Template>,
    /// How many must approve.
    pub approval: Approval,
    /// The list approvers come from.
    pub approvers: Option<String>,
    /// The least time between two runs for one target.
    pub cooldown: Duration,
    /// The most runs in any hour.
    pub max_per_hour: Option<u32>,
    /// Only say what would be done.
    pub dry_run: bool,
    /// Whether an action found started but unfinished after a restart may run again.
    pub safe_to_repeat: bool,
    /// Where its approval requests and results go, if not the route's room.
    pub room: Option<String>,
    /// After a successful run, how long to wait for the alert to resolve before saying that
    /// the action did not fix it.
    pub verify: Option<Duration>,
}

/// A source of signed events.
#[derive(Clone, Debug)]
pub struct Source {
    /// Its HMAC secret.
    pub secret: Secret,
    /// Where its events are posted, if not by the routes.
    pub room: Option<String>,
}

/// The checked `[engine]` table.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The bot that speaks for the engine by default.
    pub bot: Option<String>,
    /// The bearer token Alertmanager sends.
    pub alertmanager_token: Option<Secret>,
    /// Named lists of approvers' identities.
    pub approvers: BTreeMap<String, Vec<String>>,
    /// Programs and hosts actions may reach.
    pub allowed: Allowed,
    /// How long an approval request stays open.
    pub approval_timeout: Duration,
    /// How many notification lines a room gets in a minute; past that, a storm: the rest are
    /// summed up in one line every 15 s (`storm_lines_per_minute`, 10 by default).
    pub storm_lines: usize,
    /// Where notifications go, first match wins.
    pub routes: Vec<Route>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
    /// Signed event sources by name.
    pub sources: BTreeMap<String, Source>,
}

/// A secret from the environment: the value must be exactly `${VAR}` (a secret written in
/// the file would be in every copy and backup of it), the variable set, and long enough.
pub(crate) fn secret(
    raw: &str,
    key: &str,
    var: &str,
    errors: &mut Vec<SettingsError>,
) -> Option<Secret> {
    let name = raw
        .strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    let Some(name) = name else {
        errors.push(
            SettingsError::at(
                key,
                "the secret must be one environment variable, not written in the file",
            )
            .hint(format!(
                "{} = \"${{{var}}}\", set in the environment",
                key.rsplit('.').next().unwrap_or(key)
            )),
        );
        return None;
    };
    match std::env::var(name) {
        Ok(v) if v.len() >= 16 => Some(Secret::new(v)),
        Ok(_) => {
            errors.push(
                SettingsError::at(
                    key,
                    format!("${name} is shorter than 16 characters: too easy to guess"),
                )
                .hint("make one with: openssl rand -hex 32"),
            );
            None
        }
        Err(_) => {
            errors.push(SettingsError::at(
                key,
                format!("${name} is not set in the environment"),
            ));
            None
        }
    }
}

fn duration(text: &str, key: &str, errors: &mut Vec<SettingsError>) -> Option<Duration> {
    match humantime::parse_duration(text) {
        Ok(d) if d > MAX_DURATION => {
            errors.push(SettingsError::at(
                key,
                format!("`{text}` is longer than 7 days"),
            ));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(
                SettingsError::at(key, format!("`{text}`: {e}"))
                    .hint("a duration such as \"90s\", \"10m\" or \"2h\""),
            );
            None
        }
    }
}

impl EngineConfig {
    /// No routes, no rules: an engine that is not configured.
    pub fn empty() -> Self {
        Self {
            bot: None,
            alertmanager_token: None,
            approvers: BTreeMap::new(),
            allowed: Allowed::default(),
            approval_timeout: Duration::from_secs(15 * 60),
            storm_lines: 10,
            routes: Vec::new(),
            rules: Vec::new(),
            sources: BTreeMap::new(),
        }
    }

    /// Reads and checks the `[engine]` table; `bots` are the names of the config's bots.
    pub fn from_table(table: toml::Table, bots: &[&str]) -> Result<Self, Vec<SettingsError>> {
        let raw: RawEngine =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let key = if path == "." { None } else { Some(path) };
                vec![match key {
                    Some(k) => SettingsError::at(k, e.inner().to_string()),
                    None => SettingsError::new(e.inner().to_string()),
                }]
            })?;
        let mut errors = Vec::new();
        let bot_known = |name: &str, key: String, errors: &mut Vec<SettingsError>| {
            if !bots.contains(&name) {
                errors.push(
                    SettingsError::at(key, format!("no bot is named `{name}`"))
                        .hint(format!("one of: {}", bots.join(", "))),
                );
            }
        };
        if let Some(b) = &raw.bot {
            bot_known(b, "bot".into(), &mut errors);
        }
        for (i, p) in raw.programs.iter().enumerate() {
            if !p.starts_with('/') {
                errors.push(
                    SettingsError::at(
                        format!("programs[{i}]"),
                        format!("`{p}` is not an absolute path"),
                    )
                    .hint("name the program by its full path, e.g. \"/usr/bin/systemctl\""),
                );
            }
        }
        for (name, list) in &raw.approvers {
            if list.is_empty() {
                errors.push(SettingsError::at(
                    format!("approvers.{name}"),
                    "an empty list",
                ));
            }
        }
        let approval_timeout = raw
            .approval_timeout
            .as_deref()
            .and_then(|t| duration(t, "approval_timeout", &mut errors))
            .unwrap_or(Duration::from_secs(15 * 60));
        if raw.storm_lines_per_minute == Some(0) {
            errors.push(
                SettingsError::at(
                    "storm_lines_per_minute",
                    "0 would sum up every notification",
                )
                .hint("at least 1; 10 by default"),
            );
        }
        let kubernetes = raw.kubernetes.map(|k| kube_settings(k, &mut errors));
        let allowed = Allowed {
            programs: raw.programs.clone(),
            hosts: raw.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            kubernetes,
        };
        let default_bot = raw
            .bot
            .clone()
            .or_else(|| bots.first().map(|b| (*b).to_owned()));
        let mut routes = Vec::new();
        for (i, r) in raw.route.into_iter().enumerate() {
            let key = format!("route[{i}]");
            let matchers = matchers(&r.matchers, &key, &mut errors);
            if let Some(b) = &r.bot {
                bot_known(b, format!("{key}.bot"), &mut errors);
            }
            let Some(bot) = r.bot.or_else(|| default_bot.clone()) else {
                errors.push(SettingsError::at(
                    format!("{key}.bot"),
                    "no bot to post with",
                ));
                continue;
            };
            routes.push(Route {
                matchers,
                bot,
                room: r.room,
            });
        }
        let mut rules: Vec<Rule> = Vec::new();
        for (i, r) in raw.rule.into_iter().enumerate() {
            let key = format!("rule[{i}]");
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                errors.push(SettingsError::at(
                    format!("{key}.name"),
                    format!("`{}`: a rule's name is letters, digits, - and _", r.name),
                ));
            }
            if rules.iter().any(|o| o.name == r.name) {
                errors.push(SettingsError::at(
                    format!("{key}.name"),
                    format!("a second rule named `{}`", r.name),
                ));
            }
            if r.matchers.is_empty() {
                errors.push(
                    SettingsError::at(
                        format!("{key}.match"),
                        "a rule without matchers would act on every alert",
                    )
                    .hint("match = ['alertname=\"…\"']"),
                );
            }
            let m = matchers(&r.matchers, &key, &mut errors);
            let ensured: Vec<String> = m.ensured().into_iter().map(str::to_owned).collect();
            let ensured: Vec<&str> = ensured.iter().map(String::as_str).collect();
            let action = action(
                r.action,
                &key,
                &ensured,
                &allowed,
                (bots, default_bot.as_deref()),
                &mut errors,
            );
            let verify = r
                .verify
                .as_deref()
                .and_then(|v| duration(v, &format!("{key}.verify"), &mut errors));
            let target = r
                .target
                .as_deref()
                .and_then(|t| template(t, &format!("{key}.target"), &ensured, &mut errors));
            let approval = match r.approval.as_deref() {
                None | Some("none") => Approval::None,
                Some("one") => Approval::One,
                Some("two") => Approval::Two,
                Some(other) => {
                    errors.push(
                        SettingsError::at(format!("{key}.approval"), format!("`{other}`"))
                            .hint("\"none\", \"one\" or \"two\""),
                    );
                    Approval::None
                }
            };
            match (&r.approvers, approval) {
                (None, Approval::None) => {}
                (None, _) => errors.push(
                    SettingsError::at(format!("{key}.approvers"), "an approval needs a list of approvers")
                        .hint("approvers = \"<name of a list in engine.approvers>\""),
                ),
                (Some(list), _) => match raw.approvers.get(list) {
                    None => errors.push(
                        SettingsError::at(format!("{key}.approvers"), format!("no approver list `{list}`"))
                            .hint(format!("define engine.approvers.{list}")),
                    ),
                    Some(people) if people.len() < approval.needed() => errors.push(SettingsError::at(
                        format!("{key}.approvers"),
                        format!(
                            "`{list}` has {} people; approval \"two\" needs two different people",
                            people.len()
                        ),
                    )),
                    Some(_) => {}
                },
            }
            let cooldown = r
                .cooldown
                .as_deref()
                .and_then(|c| duration(c, &format!("{key}.cooldown"), &mut errors))
                .unwrap_or(Duration::ZERO);
            if r.max_per_hour == Some(0) {
                errors.push(
                    SettingsError::at(format!("{key}.max_per_hour"), "0 would never run")
                        .hint("leave it out for no cap, or set dry_run = true"),
                );
            }
            let Some(action) = action else { continue };
            rules.push(Rule {
                name: r.name,
                matchers: m,
                action,
                target,
                approval,
                approvers: r.approvers,
                cooldown,
                max_per_hour: r.max_per_hour,
                dry_run: r.dry_run,
                safe_to_repeat: r.safe_to_repeat,
                room: r.room,
                verify,
            });
        }
        let mut sources = BTreeMap::new();
        for (name, s) in raw.source {
            let var = format!(
                "OPSBOT_{}_SECRET",
                name.to_ascii_uppercase().replace('-', "_")
            );
            if let Some(secret) = secret(
                &s.secret,
                &format!("source.{name}.secret"),
                &var,
                &mut errors,
            ) {
                sources.insert(
                    name,
                    Source {
                        secret,
                        room: s.room,
                    },
                );
            }
        }
        let alertmanager_token = raw.alertmanager_token.as_deref().and_then(|t| {
            secret(
                t,
                "alertmanager_token",
                "OPSBOT_ALERTMANAGER_TOKEN",
                &mut errors,
            )
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            bot: default_bot,
            alertmanager_token,
            approvers: raw.approvers,
            allowed,
            approval_timeout,
            storm_lines: raw.storm_lines_per_minute.unwrap_or(10),
            routes,
            rules,
            sources,
        })
    }
}

fn matchers(texts: &[String], key: &str, errors: &mut Vec<SettingsError>) -> Matchers {
    Matchers::parse(texts).unwrap_or_else(|bad| {
        errors.extend(bad.into_iter().map(|(j, e)| {
            SettingsError::at(format!("{key}.match[{j}]"), e)
                .hint("name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\"")
        }));
        Matchers::default()
    })
}

fn template(
    text: &str,
    key: &str,
    ensured: &[&str],
    errors: &mut Vec<SettingsError>,
) -> Option<Template> {
    match Template::parse(text) {
        Err(e) => {
            errors.push(SettingsError::at(key, e));
            None
        }
        Ok(t) => {
            let unsure = t.unsure(ensured);
            if let Some(l) = unsure.first() {
                errors.push(
                    SettingsError::at(
                        key,
                        format!(
                            "`{{{l}}}`: the rule's matchers do not make sure alerts have `{l}`"
                        ),
                    )
                    .hint(format!("add the matcher '{l}=~\".+\"' to the rule's match")),
                );
                return None;
            }
            Some(t)
        }
    }
}

/// Checks the `[engine.kubernetes]` table.
fn kube_settings(k: RawKube, errors: &mut Vec<SettingsError>) -> KubeSettings {
    if let Some(path) = &k.kubeconfig
        && let Err(e) = std::fs::metadata(path)
    {
        errors.push(SettingsError::at(
            "kubernetes.kubeconfig",
            format!("{path}: {e}"),
        ));
    }
    for (i, ns) in k.namespaces.iter().enumerate() {
        if ns.len() > 63 || ns.contains('.') || crate::kubernetes::bad_name(ns).is_some() {
            errors.push(SettingsError::at(
                format!("kubernetes.namespaces[{i}]"),
                format!("`{}` is not a namespace name", ns.escape_default()),
            ));
        }
    }
    for (i, n) in k.nodes.iter().enumerate() {
        let name = n.strip_suffix('*').unwrap_or(n);
        if n != "*" && crate::kubernetes::bad_name(name.trim_end_matches(['-', '.'])).is_some() {
            errors.push(
                SettingsError::at(
                    format!("kubernetes.nodes[{i}]"),
                    format!("`{}` is not a node name or prefix", n.escape_default()),
                )
                .hint("a name, or a prefix with * at the end: \"worker-*\""),
            );
        }
    }
    let timeout = k
        .timeout
        .as_deref()
        .and_then(|t| duration(t, "kubernetes.timeout", errors))
        .unwrap_or(Duration::from_secs(30));
    KubeSettings {
        kubeconfig: k.kubeconfig.map(Into::into),
        context: k.context,
        namespaces: k.namespaces,
        nodes: k.nodes,
        timeout,
    }
}

fn action(
    raw: RawAction,
    key: &str,
    ensured: &[&str],
    allowed: &Allowed,
    (bots, default_bot): (&[&str], Option<&str>),
    errors: &mut Vec<SettingsError>,
) -> Option<ActionSpec> {
    let before = errors.len();
    let spec = match raw {
        RawAction::Command {
            program,
            args,
            timeout,
        } => {
            if !allowed.programs.contains(&program) {
                errors.push(
                    SettingsError::at(
                        format!("{key}.action.program"),
                        format!("{program} is not on the list of programs"),
                    )
                    .hint(format!("add \"{program}\" to engine.programs")),
                );
            }
            let args: Vec<Option<Template>> = args
                .iter()
                .enumerate()
                .map(|(j, a)| template(a, &format!("{key}.action.args[{j}]"), ensured, errors))
                .collect();
            let timeout = timeout
                .as_deref()
                .and_then(|t| duration(t, &format!("{key}.action.timeout"), errors))
                .unwrap_or(Duration::from_secs(60));
            ActionSpec::Command {
                program,
                args: args.into_iter().flatten().collect(),
                timeout,
            }
        }
        RawAction::Http {
            method,
            url,
            headers,
            body,
        } => {
            let method = method.to_ascii_uppercase();
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                errors.push(SettingsError::at(
                    format!("{key}.action.method"),
                    format!("`{method}`: GET, POST, PUT, PATCH or DELETE"),
                ));
            }
            let url_key = format!("{key}.action.url");
            let url_t = template(&url, &url_key, ensured, errors);
            if let Some(t) = &url_t {
                // The host is fixed in the config: a place may only come in the path or after.
                let authority_end = url
                    .find("://")
                    .map(|s| s + 3 + url[s + 3..].find('/').unwrap_or(url.len() - s - 3));
                let first_place = url.find('{');
                if matches!((authority_end, first_place), (Some(end), Some(p)) if p < end) {
                    errors.push(SettingsError::at(
                        url_key.clone(),
                        "a place in the scheme or host: the host must be written out",
                    ));
                } else {
                    let sample = t.render_with(|_| Some("x")).unwrap_or_default();
                    let plan = crate::action::Plan::Http {
                        method: method.clone(),
                        url: sample,
                        headers: BTreeMap::new(),
                        body: None,
                    };
                    if let Some(why) = allowed.refuses(&plan) {
                        errors.push(
                            SettingsError::at(url_key.clone(), why)
                                .hint("add the host to engine.hosts"),
                        );
                    }
                }
            }
            let headers = headers
                .iter()
                .filter_map(|(k, v)| {
                    template(v, &format!("{key}.action.headers.{k}"), ensured, errors)
                        .map(|t| (k.clone(), t))
                })
                .collect();
            let body =
                body.and_then(|b| template(&b, &format!("{key}.action.body"), ensured, errors));
            ActionSpec::Http {
                method,
                url: url_t?,
                headers,
                body,
            }
        }
        RawAction::Heal { bot, subsystem } => {
            let bot = match bot.as_deref().or(default_bot) {
                Some(b) if bots.contains(&b) => b.to_owned(),
                Some(b) => {
                    errors.push(
                        SettingsError::at(
                            format!("{key}.action.bot"),
                            format!("no bot is named `{b}`"),
                        )
                        .hint(format!("one of: {}", bots.join(", "))),
                    );
                    String::new()
                }
                None => {
                    errors.push(SettingsError::at(
                        format!("{key}.action.bot"),
                        "which bot to heal",
                    ));
                    String::new()
                }
            };
            let subsystem = template(
                &subsystem,
                &format!("{key}.action.subsystem"),
                ensured,
                errors,
            );
            ActionSpec::Heal {
                bot,
                subsystem: subsystem?,
            }
        }
        RawAction::Kubernetes {
            verb,
            deployment,
            pod,
            node,
            namespace,
            replicas,
        } => {
            let at = |k: &str| format!("{key}.action.{k}");
            if !cfg!(feature = "kubernetes") {
                errors.push(
                    SettingsError::at(
                        at("kind"),
                        "this opsbot was built without the `kubernetes` feature",
                    )
                    .hint("build it with: cargo build --release --features kubernetes"),
                );
            }
            let Some(k) = &allowed.kubernetes else {
                errors.push(
                    SettingsError::at(at("kind"), "the engine has no [engine.kubernetes] table")
                        .hint(
                            "add [engine.kubernetes] with the namespaces (and nodes) it may touch",
                        ),
                );
                return None;
            };
            // The object named by its kind, which must be the verb's.
            let object = verb.object();
            let mut name = None;
            for (kind, value) in [("deployment", deployment), ("pod", pod), ("node", node)] {
                match value {
                    Some(v) if kind == object => name = Some(v),
                    Some(_) => errors.push(
                        SettingsError::at(
                            at(kind),
                            format!("`{verb:?}` acts on a {object}").to_lowercase(),
                        )
                        .hint(format!("write {object} = \"…\"")),
                    ),
                    None => {}
                }
            }
            let Some(name) = name else {
                errors.push(SettingsError::at(
                    at(object),
                    format!("which {object} to {}", format!("{verb:?}").to_lowercase()),
                ));
                return None;
            };
            match (verb.namespaced(), &namespace) {
                (true, None) => errors.push(SettingsError::at(
                    at("namespace"),
                    format!("a {object} lives in a namespace: which one"),
                )),
                (false, Some(_)) => errors.push(SettingsError::at(
                    at("namespace"),
                    "a node has no namespace",
                )),
                _ => {}
            }
            match (verb, replicas) {
                (Verb::Scale, None) => errors.push(SettingsError::at(
                    at("replicas"),
                    "how many replicas to scale to",
                )),
                (Verb::Scale, Some(n)) if n > MAX_REPLICAS => errors.push(SettingsError::at(
                    at("replicas"),
                    format!("{n} is more than {MAX_REPLICAS}"),
                )),
                (Verb::Scale, Some(_)) | (_, None) => {}
                (_, Some(_)) => errors.push(SettingsError::at(
                    at("replicas"),
                    "replicas go with verb \"scale\" only",
                )),
            }
            let name_t = template(&name, &at(object), ensured, errors);
            let ns_t = namespace
                .as_deref()
                .and_then(|n| template(n, &at("namespace"), ensured, errors));
            // What is written out is checked now; what comes from an alert, when it comes.
            if let Some(t) = &ns_t
                && t.labels().next().is_none()
                && let Some(ns) = namespace.as_deref()
                && let Some(why) = k.refuses(verb, Some(ns), "x")
            {
                errors.push(
                    SettingsError::at(at("namespace"), why)
                        .hint("add it to engine.kubernetes.namespaces"),
                );
            }
            if let Some(t) = &name_t
                && t.labels().next().is_none()
                && let Some(why) = crate::kubernetes::bad_name(&name).or_else(|| {
                    (verb == Verb::Cordon)
                        .then(|| k.refuses(verb, None, &name))
                        .flatten()
                })
            {
                errors.push(SettingsError::at(at(object), why));
            }
            ActionSpec::Kubernetes {
                verb,
                namespace: ns_t,
                name: name_t?,
                replicas,
            }
        }
    };
    (errors.len() == before).then_some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<EngineConfig, Vec<SettingsError>> {
        let table: toml::Table = toml::from_str(text).unwrap();
        EngineConfig::from_table(table, &["ops", "pager"])
    }

    fn problems(text: &str) -> Vec<String> {
        check(text)
            .unwrap_err()
            .into_iter()
            .map(|e| {
                format!(
                    "{}: {} ({})",
                    e.key.unwrap_or_default(),
                    e.message,
                    e.hint.unwrap_or_default()
                )
            })
            .collect()
    }

    const GOOD: &str = r##"
        bot = "ops"
        programs = ["/usr/bin/systemctl"]
        hosts = ["hooks.example.com"]
        approvers.oncall = ["alice", "bob"]
        [[route]]
        match = ['severity="page"']
        room = "#ops"
        [[rule]]
        name = "restart-web"
        match = ['alertname="WebDown"', 'service=~".+"']
        action = { kind = "command", program = "/usr/bin/systemctl", args = ["restart", "{service}"] }
        target = "{service}"
        approval = "two"
        approvers = "oncall"
        cooldown = "10m"
        max_per_hour = 3
        [[rule]]
        name = "hook"
        match = ['alertname="Disk"', 'instance=~".+"']
        action = { kind = "http", url = "https://hooks.example.com/clean/{instance}" }
    "##;

    #[test]
    fn secrets_come_from_the_environment_only() {
        let p = problems(&format!(
            "alertmanager_token = \"s3cr3t-written-in-the-file\"\n{GOOD}"
        ));
        assert!(
            p.iter().any(|p| p
                .starts_with("alertmanager_token: the secret must be one environment variable")),
            "{p:?}"
        );
        let p = problems(&format!(
            "alertmanager_token = \"${{OPSBOT_TEST_UNSET_VARIABLE}}\"\n{GOOD}"
        ));
        assert!(p.iter().any(|p| p.contains("is not set")), "{p:?}");
        let p = problems(&format!("{GOOD}\n[source.ci]\nsecret = \"x${{PATH}}\"\n"));
        assert!(
            p.iter().any(|p| p.starts_with("source.ci.secret:")),
            "{p:?}"
        );
        let c = check(&format!("alertmanager_token = \"${{PATH}}\"\n{GOOD}")).unwrap();
        assert_eq!(
            c.alertmanager_token.unwrap().expose(),
            std::env::var("PATH").unwrap()
        );
    }

    #[cfg(feature = "kubernetes")]
    #[test]
    fn kubernetes_actions_are_checked_against_their_table() {
        let kube = "[kubernetes]\nnamespaces = [\"prod\"]\nnodes = [\"worker-*\"]\n";
        let rule = |action: &str| {
            format!(
                "[[rule]]\nname = \"k\"\nmatch = ['alertname=\"X\"', 'ns=~\".+\"', 'd=~\".+\"']\naction = {action}\n"
            )
        };
        let good = rule(
            r#"{ kind = "kubernetes", verb = "restart", deployment = "{d}", namespace = "{ns}" }"#,
        );
        let c = check(&format!("{good}{kube}")).unwrap();
        assert!(matches!(
            c.rules[0].action,
            ActionSpec::Kubernetes {
                verb: Verb::Restart,
                ..
            }
        ));
        let p = problems(&good);
        assert!(
            p.iter().any(|p| p
                .starts_with("rule[0].action.kind: the engine has no [engine.kubernetes] table")),
            "{p:?}"
        );
        for (action, want) in [
            (
                r#"{ kind = "kubernetes", verb = "restart", pod = "{d}", namespace = "prod" }"#,
                "rule[0].action.pod: `restart` acts on a deployment",
            ),
            (
                r#"{ kind = "kubernetes", verb = "scale", deployment = "web", namespace = "prod" }"#,
                "rule[0].action.replicas: how many replicas",
            ),
            (
                r#"{ kind = "kubernetes", verb = "scale", deployment = "web", namespace = "prod", replicas = 5000 }"#,
                "rule[0].action.replicas: 5000 is more than 1000",
            ),
            (
                r#"{ kind = "kubernetes", verb = "delete", pod = "web-1", namespace = "prod", replicas = 2 }"#,
                "rule[0].action.replicas: replicas go with verb \"scale\" only",
            ),
            (
                r#"{ kind = "kubernetes", verb = "delete", pod = "web-1" }"#,
                "rule[0].action.namespace: a pod lives in a namespace",
            ),
            (
                r#"{ kind = "kubernetes", verb = "restart", deployment = "web", namespace = "kube-system" }"#,
                "rule[0].action.namespace: namespace kube-system is not on the engine's list",
            ),
            (
                r#"{ kind = "kubernetes", verb = "cordon", node = "control-1" }"#,
                "rule[0].action.node: node control-1 is not on the engine's list of nodes",
            ),
            (
                r#"{ kind = "kubernetes", verb = "cordon", node = "worker-1", namespace = "prod" }"#,
                "rule[0].action.namespace: a node has no namespace",
            ),
            (
                r#"{ kind = "kubernetes", verb = "restart", deployment = "{service}", namespace = "prod" }"#,
                "rule[0].action.deployment: `{service}`: the rule's matchers do not make sure",
            ),
            (
                r#"{ kind = "kubernetes", verb = "reboot", node = "worker-1" }"#,
                "rule[0].action",
            ),
        ] {
            let p = problems(&format!("{}{kube}", rule(action)));
            assert!(p.iter().any(|p| p.starts_with(want)), "{action}: {p:?}");
        }
        let p = problems(&format!(
            "{good}[kubernetes]\nnamespaces = [\"Prod_1\"]\nkubeconfig = \"/nonexistent/kubeconfig\"\n"
        ));
        assert!(
            p.iter().any(
                |p| p.starts_with("kubernetes.namespaces[0]: `Prod_1` is not a namespace name")
            ),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|p| p.starts_with("kubernetes.kubeconfig: /nonexistent/kubeconfig:")),
            "{p:?}"
        );
    }

    #[cfg(not(feature = "kubernetes"))]
    #[test]
    fn without_the_feature_a_kubernetes_action_says_so() {
        let p = problems(
            "[[rule]]\nname = \"k\"\nmatch = ['alertname=\"X\"']\n\
             action = { kind = \"kubernetes\", verb = \"cordon\", node = \"worker-1\" }\n\
             [kubernetes]\nnodes = [\"worker-*\"]\n",
        );
        assert!(
            p.iter().any(|p| p.starts_with(
                "rule[0].action.kind: this opsbot was built without the `kubernetes` feature"
            )),
            "{p:?}"
        );
    }

    #[test]
    fn a_good_table_checks() {
        let c = check(GOOD).unwrap();
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[0].approval, Approval::Two);
        assert_eq!(c.rules[0].cooldown, Duration::from_secs(600));
        assert_eq!(c.routes[0].bot, "ops");
    }

    #[test]
    fn a_label_the_matchers_do_not_ensure_is_a_check_time_error() {
        let p = problems(&GOOD.replace("'service=~\".+\"'", "'env=\"prod\"'"));
        assert!(
            p.iter()
                .any(|p| p.starts_with("rule[0].action.args[1]: `{service}`")
                    && p.contains("service=~\".+\"")),
            "{p:?}"
        );
    }

    #[test]
    fn every_problem_is_named_with_its_key() {
        let bad = GOOD
            .replace("\"/usr/bin/systemctl\", args", "\"/bin/rm\", args")
            .replace("approvers = \"oncall\"", "approvers = \"nobody\"")
            .replace("cooldown = \"10m\"", "cooldown = \"soon\"")
            .replace("hooks.example.com/clean", "evil.example.com/clean")
            .replace("'severity=\"page\"'", "'severity=~\"(\"'");
        let p = problems(&bad);
        for want in [
            "rule[0].action.program: /bin/rm is not on the list",
            "rule[0].approvers: no approver list `nobody`",
            "rule[0].cooldown: `soon`",
            "rule[1].action.url: evil.example.com is not on the engine's list of hosts",
            "route[0].match[0]:",
        ] {
            assert!(p.iter().any(|p| p.starts_with(want)), "{want} not in {p:?}");
        }
        let p = problems("bot = \"nobody\"\nfrobnicate = 1");
        assert!(p[0].contains("frobnicate"), "{p:?}");
        let p = problems(&GOOD.replace(
            "approvers.oncall = [\"alice\", \"bob\"]",
            "approvers.oncall = [\"alice\"]",
        ));
        assert!(
            p.iter().any(|p| p.contains("two different people")),
            "{p:?}"
        );
        let p = problems(&GOOD.replace(
            "hooks.example.com/clean/{instance}",
            "{instance}.example.com/clean",
        ));
        assert!(
            p.iter().any(|p| p.contains("host must be written out")),
            "{p:?}"
        );
    }
}
