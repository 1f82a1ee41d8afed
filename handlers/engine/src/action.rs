//! What a rule does: run a program (`command`), call a URL (`http`), heal a subsystem of the
//! bot (`heal`) or act on a Kubernetes cluster (`kubernetes`). Each kind first renders
//! its plan in one line, which the approval request and a dry run show; then it runs with
//! bounds: only allow-listed programs and hosts, no shell, a clean environment, a timeout, and
//! output cut to a few kilobytes.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::alert::Alert;
use crate::kubernetes::{KubeSettings, Verb};
use crate::rules::{Missing, Template};

/// The most output kept of a command or an HTTP answer, in bytes.
pub const MAX_OUTPUT: usize = 4096;

/// An action with its templates, as a rule holds it.
#[derive(Clone, Debug)]
pub enum ActionSpec {
    /// Runs `program` with `args`: each argument one template, so a value stays one argument.
    Command {
        /// The program's absolute path (on the allow-list).
        program: String,
        /// Its arguments.
        args: Vec<Template>,
        /// How long it may run.
        timeout: Duration,
    },
    /// Calls a URL.
    Http {
        /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
        method: String,
        /// The URL: each filled place is percent-encoded, so it cannot add a path, query or
        /// host.
        url: Template,
        /// Header names to value templates.
        headers: BTreeMap<String, Template>,
        /// The body template (sent as is with the values filled in).
        body: Option<Template>,
    },
    /// Heals one of opsbot's own subsystems (what `!heal` does).
    Heal {
        /// The bot.
        bot: String,
        /// The subsystem, as `!status` names it (`transport`, `handler:dns`).
        subsystem: Template,
    },
    /// Acts on a Kubernetes cluster.
    Kubernetes {
        /// What it does.
        verb: Verb,
        /// The namespace (for a Deployment or a Pod).
        namespace: Option<Template>,
        /// The object's name.
        name: Template,
        /// The replicas of a `scale`.
        replicas: Option<u32>,
    },
}

/// An action with every place filled: what is shown, approved and run, and what travels
/// between processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Plan {
    /// A program and its arguments.
    Command {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// Its time limit, in seconds.
        timeout_secs: u64,
    },
    /// An HTTP request.
    Http {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// Its headers.
        headers: BTreeMap<String, String>,
        /// Its body.
        body: Option<String>,
    },
    /// Heals a subsystem of a bot of this process.
    Heal {
        /// The bot.
        bot: String,
        /// The subsystem.
        subsystem: String,
    },
    /// Acts on a Kubernetes cluster.
    Kubernetes {
        /// What it does.
        verb: Verb,
        /// The namespace.
        namespace: Option<String>,
        /// The object's name.
        name: String,
        /// The replicas of a `scale`.
        replicas: Option<u32>,
    },
}

impl ActionSpec {
    /// The labels its templates name.
    pub fn labels(&self) -> Vec<&str> {
        match self {
            ActionSpec::Command { args, .. } => args.iter().flat_map(Template::labels).collect(),
            ActionSpec::Http {
                url, headers, body, ..
            } => url
                .labels()
                .chain(headers.values().flat_map(Template::labels))
                .chain(body.iter().flat_map(Template::labels))
                .collect(),
            ActionSpec::Heal { subsystem, .. } => subsystem.labels().collect(),
            ActionSpec::Kubernetes {
                namespace, name, ..
            } => namespace
                .iter()
                .flat_map(Template::labels)
                .chain(name.labels())
                .collect(),
        }
    }

    /// Fills it from `alert`.
    pub fn plan(&self, alert: &Alert) -> Result<Plan, Missing> {
        self.plan_with(|l| alert.labels.get(l).map(String::as_str))
    }

    /// Fills it from `value`.
    pub fn plan_with<'a>(
        &self,
        value: impl Fn(&str) -> Option<&'a str> + Copy,
    ) -> Result<Plan, Missing> {
        Ok(match self {
            ActionSpec::Command {
                program,
                args,
                timeout,
            } => Plan::Command {
                program: program.clone(),
                args: args
                    .iter()
                    .map(|a| a.render_with(value))
                    .collect::<Result<_, _>>()?,
                timeout_secs: timeout.as_secs().max(1),
            },
            ActionSpec::Http {
                method,
                url,
                headers,
                body,
            } => Plan::Http {
                method: method.clone(),
                url: url.render_encoded(value, percent_encode)?,
                headers: headers
                    .iter()
                    .map(|(k, t)| {
                        // A header value cannot end a line: the places are filled with
                        // control characters taken out.
                        t.render_encoded(value, no_controls).map(|v| (k.clone(), v))
                    })
                    .collect::<Result<_, _>>()?,
                body: body.as_ref().map(|b| b.render_with(value)).transpose()?,
            },
            ActionSpec::Heal { bot, subsystem } => Plan::Heal {
                bot: bot.clone(),
                subsystem: subsystem.render_encoded(value, no_controls)?,
            },
            ActionSpec::Kubernetes {
                verb,
                namespace,
                name,
                replicas,
            } => Plan::Kubernetes {
                verb: *verb,
                // Filled as they are: a name that is not a Kubernetes name is refused whole
                // before anything is sent.
                namespace: namespace
                    .as_ref()
                    .map(|t| t.render_with(value))
                    .transpose()?,
                name: name.render_with(value)?,
                replicas: *replicas,
            },
        })
    }
}

/// Characters left as they are in a URL's filled place (RFC 3986's unreserved ones).
const PLACE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn percent_encode(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, PLACE).to_string()
}

fn no_controls(v: &str) -> String {
    v.chars().filter(|c| !c.is_control()).collect()
}

impl Plan {
    /// The plan in one line: `run /usr/bin/systemctl restart web`, `POST https://…`.
    pub fn describe(&self) -> String {
        match self {
            Plan::Command { program, args, .. } => {
                let mut words = vec![program.as_str()];
                words.extend(args.iter().map(String::as_str));
                format!("run {}", oneline(&shell_words::join(words)))
            }
            Plan::Http { method, url, .. } => format!("{method} {}", oneline(url)),
            Plan::Heal { bot, subsystem } => {
                format!("heal {} of bot {bot}", oneline(subsystem))
            }
            Plan::Kubernetes {
                verb,
                namespace,
                name,
                replicas,
            } => crate::kubernetes::describe(
                *verb,
                namespace.as_deref().map(oneline).as_deref(),
                &oneline(name),
                *replicas,
            ),
        }
    }
}

/// `s` on one line: control characters shown as `\u{..}` escapes.
fn oneline(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// What running a plan came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Whether it succeeded (exit status 0, a 2xx answer).
    pub ok: bool,
    /// A one-line summary (`exit status 0`, `HTTP 503`, `timed out after 30s`).
    pub summary: String,
    /// The output (stdout then stderr, or the answer's body), cut to [`MAX_OUTPUT`].
    pub output: String,
}

/// Where plans may go.
#[derive(Clone, Debug, Default)]
pub struct Allowed {
    /// Programs `command` may run, by absolute path.
    pub programs: Vec<String>,
    /// Hosts `http` may call (`host` or `host:port`), lower-case.
    pub hosts: Vec<String>,
    /// The cluster `kubernetes` may act on, and where in it.
    pub kubernetes: Option<KubeSettings>,
}

impl Allowed {
    /// Why `plan` may not run, if it may not.
    pub fn refuses(&self, plan: &Plan) -> Option<String> {
        match plan {
            Plan::Command { program, .. } => (!self.programs.iter().any(|p| p == program))
                .then(|| format!("{program} is not on the engine's list of programs")),
            Plan::Http { url, .. } => match reqwest::Url::parse(url) {
                Err(e) => Some(format!("{}: {e}", oneline(url))),
                Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                    Some(format!("{}: only http and https", oneline(url)))
                }
                Ok(u) => {
                    let host = u.host_str().unwrap_or("").to_ascii_lowercase();
                    let with_port = format!("{host}:{}", u.port_or_known_default().unwrap_or(0));
                    (!self.hosts.iter().any(|h| *h == host || *h == with_port))
                        .then(|| format!("{host} is not on the engine's list of hosts"))
                }
            },
            // The bot is checked with the config; the subsystem by the heal itself.
            Plan::Heal { .. } => None,
            Plan::Kubernetes {
                verb,
                namespace,
                name,
                ..
            } => match &self.kubernetes {
                None => Some("the engine has no [engine.kubernetes] table".into()),
                Some(_) if !cfg!(feature = "kubernetes") => {
                    Some("this opsbot was built without the `kubernetes` feature".into())
                }
                Some(k) => k.refuses(*verb, namespace.as_deref(), name),
            },
        }
    }
}

/// Heals a bot's subsystem (`bot`, `subsystem`): answers what was healed, or why not.
pub type Healer = dyn Fn(&str, &str) -> Result<String, String> + Send + Sync;

/// Runs `plan`, which `allowed` must permit; `heal` carries out heals.
pub async fn run(plan: &Plan, allowed: &Allowed, heal: &Healer) -> Outcome {
    if let Some(why) = allowed.refuses(plan) {
        return Outcome {
            ok: false,
            summary: format!("refused: {why}"),
            output: String::new(),
        };
    }
    match plan {
        Plan::Command {
            program,
            args,
            timeout_secs,
        } => run_command(program, args, Duration::from_secs(*timeout_secs)).await,
        Plan::Http {
            method,
            url,
            headers,
            body,
        } => run_http(method, url, headers, body.as_deref()).await,
        #[cfg(feature = "kubernetes")]
        Plan::Kubernetes {
            verb,
            namespace,
            name,
            replicas,
        } => match &allowed.kubernetes {
            Some(k) => {
                crate::kubernetes::run(k, *verb, namespace.as_deref(), name, *replicas).await
            }
            None => Outcome {
                ok: false,
                summary: "refused: the engine has no [engine.kubernetes] table".into(),
                output: String::new(),
            },
        },
        #[cfg(not(feature = "kubernetes"))]
        Plan::Kubernetes { .. } => Outcome {
            ok: false,
            summary: "refused: this opsbot was built without the `kubernetes` feature".into(),
            output: String::new(),
        },
        Plan::Heal { bot, subsystem } => match heal(bot, subsystem) {
            Ok(what) => Outcome {
                ok: true,
                summary: format!("healing {what}"),
                output: String::new(),
            },
            Err(why) => Outcome {
                ok: false,
                summary: why,
                output: String::new(),
            },
        },
    }
}

async fn run_command(program: &str, args: &[String], timeout: Duration) -> Outcome {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                ok: false,
                summary: format!("could not start {program}: {e}"),
                output: String::new(),
            };
        }
    };
    let out = child.stdout.take();
    let err = child.stderr.take();
    let work = async {
        let (o, e) = tokio::join!(read_cut(out), read_cut(err));
        (child.wait().await, o, e)
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Outcome {
            ok: false,
            summary: format!("timed out after {}s (stopped)", timeout.as_secs()),
            output: String::new(),
        },
        Ok((status, o, e)) => {
            let mut output = o;
            if !e.is_empty() {
                if !output.is_empty() {
                    output.push('\n');
                }
                output.push_str(&e);
            }
            cut(&mut output);
            match status {
                Ok(s) => Outcome {
                    ok: s.success(),
                    summary: match s.code() {
                        Some(c) => format!("exit status {c}"),
                        None => "stopped by a signal".to_owned(),
                    },
                    output,
                },
                Err(e) => Outcome {
                    ok: false,
                    summary: format!("could not wait for {program}: {e}"),
                    output,
                },
            }
        }
    }
}

/// Reads all of `r`, keeping the first [`MAX_OUTPUT`] bytes.
async fn read_cut(r: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut r) = r else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = (MAX_OUTPUT + 4).saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn cut(s: &mut String) {
    if s.len() > MAX_OUTPUT {
        let mut end = MAX_OUTPUT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

async fn run_http(
    method: &str,
    url: &str,
    headers: &BTreeMap<String, String>,
    body: Option<&str>,
) -> Outcome {
    let Ok(m) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return Outcome {
            ok: false,
            summary: format!("{method} is not an HTTP method"),
            output: String::new(),
        };
    };
    let client = opsbot::http::shared();
    let throttle = opsbot::http::Throttle::new();
    let answer = client
        .send(&throttle, opsbot::http::Repeat::IfNotSent, url, |c| {
            let mut r = c.request(m.clone(), url);
            for (k, v) in headers {
                r = r.header(k, v);
            }
            if let Some(b) = body {
                r = r.body(b.to_owned());
            }
            r
        })
        .await;
    match answer {
        Ok(a) => Outcome {
            ok: a.is_success(),
            summary: format!("HTTP {}", a.status),
            output: a.text(MAX_OUTPUT),
        },
        Err(e) => Outcome {
            ok: false,
            summary: e.to_string(),
            output: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_heal(_: &str, _: &str) -> Result<String, String> {
        Err("no heals here".into())
    }

    #[tokio::test]
    async fn a_heal_is_one_line_and_its_answer_is_the_outcome() {
        let spec = ActionSpec::Heal {
            bot: "ops".into(),
            subsystem: Template::parse("handler:{handler}").unwrap(),
        };
        let plan = spec.plan_with(|_| Some("dns\nx")).unwrap();
        assert_eq!(plan.describe(), "heal handler:dnsx of bot ops");
        let ok = |bot: &str, sub: &str| -> Result<String, String> { Ok(format!("{sub} of {bot}")) };
        let out = run(&plan, &allowed(), &ok).await;
        assert!(out.ok);
        assert_eq!(out.summary, "healing handler:dnsx of ops");
        let out = run(&plan, &allowed(), &no_heal).await;
        assert_eq!((out.ok, out.summary.as_str()), (false, "no heals here"));
    }

    fn allowed() -> Allowed {
        Allowed {
            programs: vec![
                "/usr/bin/printf".into(),
                "/bin/sleep".into(),
                "/usr/bin/head".into(),
                "/usr/bin/env".into(),
            ],
            hosts: vec!["hooks.example.com".into(), "127.0.0.1:8080".into()],
            kubernetes: None,
        }
    }

    fn command(program: &str, args: &[&str], timeout_secs: u64) -> Plan {
        Plan::Command {
            program: program.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            timeout_secs,
        }
    }

    #[tokio::test]
    async fn a_hostile_label_reaches_the_program_as_one_argument() {
        let spec = ActionSpec::Command {
            program: "/usr/bin/printf".into(),
            args: vec![
                Template::parse("[%s]").unwrap(),
                Template::parse("{service}").unwrap(),
            ],
            timeout: Duration::from_secs(5),
        };
        let hostile = "web; rm -rf / $(id) `id`\nsecond line";
        let plan = spec
            .plan_with(|l| (l == "service").then_some(hostile))
            .unwrap();
        let out = run(&plan, &allowed(), &no_heal).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.output, format!("[{hostile}]"));
        assert!(!plan.describe().contains('\n'), "{}", plan.describe());
    }

    #[tokio::test]
    async fn the_environment_is_clean() {
        let out = run(&command("/usr/bin/env", &[], 5), &allowed(), &no_heal).await;
        let mut names: Vec<&str> = out
            .output
            .lines()
            .filter_map(|l| l.split('=').next())
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["LANG", "PATH"], "{}", out.output);
    }

    #[tokio::test]
    async fn a_slow_program_is_stopped_and_long_output_cut() {
        let out = run(&command("/bin/sleep", &["30"], 1), &allowed(), &no_heal).await;
        assert!(!out.ok);
        assert!(out.summary.contains("timed out after 1s"), "{out:?}");
        let out = run(
            &command("/usr/bin/head", &["-c", "100000", "/dev/zero"], 5),
            &allowed(),
            &no_heal,
        )
        .await;
        assert!(out.ok, "{out:?}");
        assert!(
            out.output.len() <= MAX_OUTPUT + '…'.len_utf8(),
            "{}",
            out.output.len()
        );
        assert!(out.output.ends_with('…'));
    }

    #[tokio::test]
    async fn programs_and_hosts_off_the_lists_are_refused() {
        let out = run(
            &command("/bin/rm", &["-rf", "/tmp/x"], 5),
            &allowed(),
            &no_heal,
        )
        .await;
        assert!(out.summary.starts_with("refused"), "{out:?}");
        let a = allowed();
        let http = |url: &str| Plan::Http {
            method: "POST".into(),
            url: url.into(),
            headers: BTreeMap::new(),
            body: None,
        };
        assert_eq!(a.refuses(&http("https://hooks.example.com/x")), None);
        assert_eq!(a.refuses(&http("http://127.0.0.1:8080/x")), None);
        assert!(a.refuses(&http("http://127.0.0.1:9090/x")).is_some());
        assert!(a.refuses(&http("https://evil.example.com/x")).is_some());
        assert!(a.refuses(&http("file:///etc/passwd")).is_some());
    }

    #[test]
    fn a_filled_url_place_cannot_change_host_path_or_query() {
        let spec = ActionSpec::Http {
            method: "POST".into(),
            url: Template::parse("https://hooks.example.com/restart/{service}").unwrap(),
            headers: [(
                "X-Service".to_owned(),
                Template::parse("{service}").unwrap(),
            )]
            .into(),
            body: Some(Template::parse("{{\"service\": \"{service}\"}}").unwrap()),
        };
        let plan = spec
            .plan_with(|_| Some("../admin?x=1#@evil.com\r\nX-Injected: 1"))
            .unwrap();
        let Plan::Http { url, headers, .. } = &plan else {
            panic!()
        };
        assert_eq!(
            url,
            "https://hooks.example.com/restart/..%2Fadmin%3Fx%3D1%23%40evil.com%0D%0AX-Injected%3A%201"
        );
        assert!(!headers["X-Service"].contains('\r') && !headers["X-Service"].contains('\n'));
        assert_eq!(allowed().refuses(&plan), None);
    }
}
