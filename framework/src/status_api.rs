//! The HTTP status API: one actix-web server per process, for every bot in it.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /` | the status page: one self-contained HTML page that reads the API every 5 s |
//! | `GET /api/v1/health` | the process's state, each bot's, and each subsystem's |
//! | `GET /api/v1/circuit-breakers` | every breaker of every bot |
//! | `GET /api/v1/healing-log?limit=N&bot=B` | the newest entries, newest first (default 200) |
//! | `POST /api/v1/heal/{bot}/{subsystem}` | a forced heal; needs `Authorization: Bearer TOKEN` |
//! | `GET /api/v1/panels` | the extra tables the page shows for crates built on the framework ([`Panel`]) |
//! | `GET /livez` | 200 while every bot's thread answers and no bot's machinery failed |
//! | `GET /readyz` | 200 while every bot's transport is connected |
//! | `GET /metrics` | Prometheus (OpenMetrics text) |
//!
//! The server runs on worker threads of its own, never on a bot's: a flood of requests costs
//! the bots a few short locks of their health registries, nothing more. Bodies are capped at
//! 16 KiB, a request must arrive within 5 s, at most [`MAX_CONNECTIONS`] connections are open
//! at once (the file descriptors are the bots' too), and the admin token is compared in
//! constant time; an address that sends [`WRONG_TOKENS`] wrong tokens within a minute gets 429
//! for a minute, whatever it sends. A request whose `Host` is not an address, `localhost` or a
//! name in `[http] hosts` is refused (403), so that a web page the operator opens cannot read
//! the API through a name of its own that it rebinds to 127.0.0.1. The JSON shapes are in
//! README.md.

mod metrics;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{KeepAlive, StatusCode};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::breaker::BreakerState;
use crate::config::Secret;
use crate::healing_log::HealingLog;
use crate::health::{
    ActorKind, ActorStatus, BotHealth, ConnState, HealError, Health, LATENCY_BUCKETS, Snapshot,
};
use crate::systemd::Heartbeat;

pub use crate::config::HttpConfig;
use metrics::{Metrics, metrics};

/// The largest request body taken.
const MAX_BODY: usize = 16 * 1024;
/// The most healing-log entries one request may ask for.
const MAX_LIMIT: usize = 10_000;
/// A bot thread silent for longer than this is not alive.
const LIVE_LIMIT: Duration = Duration::from_secs(10);
/// Connections open at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 256;
/// Wrong admin tokens one address may send within a minute.
pub const WRONG_TOKENS: u32 = 5;
/// How long an address that sent too many wrong tokens is refused.
const GUESSER_WAIT: Duration = Duration::from_secs(60);

struct Bot {
    health: Health,
    beat: Heartbeat,
}

struct Shared {
    bots: Vec<Bot>,
    log: Option<HealingLog>,
    panels: Vec<Panel>,
    token: Option<Secret>,
    registry: Registry,
    hosts: Vec<String>,
    guesses: Guesses,
}

/// Wrong admin tokens per address, and the addresses refused for sending too many.
struct Guesses {
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    refused: Mutex<HashMap<IpAddr, Instant>>,
}

impl Guesses {
    fn new() -> Self {
        let n = std::num::NonZeroU32::new(WRONG_TOKENS).expect("non-zero");
        Self {
            limiter: governor::RateLimiter::hashmap(governor::Quota::per_minute(n).allow_burst(n)),
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` is still refused, if it is.
    fn refused_for(&self, ip: IpAddr) -> Option<Duration> {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused
            .get(&ip)
            .and_then(|until| until.checked_duration_since(Instant::now()))
    }

    /// Counts a wrong token from `ip`; answers whether it is now refused.
    fn wrong(&self, ip: IpAddr) -> bool {
        if self.limiter.check_key(&ip).is_ok() {
            return false;
        }
        let now = Instant::now();
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.retain(|_, until| *until > now);
        if refused.len() < 65_536 {
            refused.insert(ip, now + GUESSER_WAIT);
        }
        self.limiter.retain_recent();
        true
    }
}

/// Whether a request's `Host` (`name`, `name:port`, `1.2.3.4:port`, `[::1]:port`) is one the
/// API answers to: an address, `localhost` (or a name under it), or one of `hosts`.
fn host_allowed(host: &str, hosts: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || hosts.contains(&name)
}

/// Refuses requests for a `Host` the API does not answer to (see the module documentation).
async fn check_host(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let allowed = match req.headers().get(header::HOST).map(HeaderValue::to_str) {
        None => true, // no browser sends a request without one
        Some(Ok(host)) => req
            .app_data::<web::Data<Shared>>()
            .is_some_and(|s| host_allowed(host, &s.hosts)),
        Some(Err(_)) => false,
    };
    if allowed {
        return next
            .call(req)
            .await
            .map(actix_web::dev::ServiceResponse::map_into_left_body);
    }
    let response = error(
        StatusCode::FORBIDDEN,
        "this API answers to its addresses, localhost and the names in [http] hosts",
    );
    Ok(req.into_response(response).map_into_right_body())
}

/// More of the API, from a crate built on the framework: its routes are served by the same
/// server, behind the same `Host` check and headers (an engine's webhook, say). Routes are
/// added before the framework's "not found" answer; a route that shadows one of the
/// framework's is never reached.
#[derive(Clone)]
pub struct ApiMount {
    routes: Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>,
    panels: Vec<Panel>,
}

impl ApiMount {
    /// A mount that adds routes with `f` (called once per server worker).
    pub fn new(f: impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static) -> Self {
        Self {
            routes: Arc::new(f),
            panels: Vec::new(),
        }
    }

    /// Shows one of the mount's answers on the status page, as a table.
    pub fn panel(mut self, panel: Panel) -> Self {
        self.panels.push(panel);
        self
    }
}

/// A table on the status page, read from a `GET` route of an [`ApiMount`] that answers a JSON
/// object: `rows` names its array of objects, each column one of their fields; `summary`, if
/// set, names a string field shown above the table. A panel marked `admin` is read with the
/// admin token, which the page asks for and keeps in the tab's memory only. Everything shown
/// is put in as text.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Panel {
    title: String,
    path: String,
    rows: String,
    summary: Option<String>,
    columns: Vec<Column>,
    admin: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
struct Column {
    field: String,
    heading: String,
    /// `text`, or `time` (milliseconds since the Unix epoch, or RFC 3339), shown as UTC.
    kind: &'static str,
}

impl Panel {
    /// A panel titled `title`, read from `path` (under `/api/`), with its rows in the answer's
    /// field `rows`.
    pub fn new(title: impl Into<String>, path: impl Into<String>, rows: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            path: path.into(),
            rows: rows.into(),
            summary: None,
            columns: Vec::new(),
            admin: false,
        }
    }

    /// A column showing each row's `field` as text.
    pub fn column(mut self, field: impl Into<String>, heading: impl Into<String>) -> Self {
        self.columns.push(Column {
            field: field.into(),
            heading: heading.into(),
            kind: "text",
        });
        self
    }

    /// A column showing each row's `field`, a time, as UTC (the whole time on hover).
    pub fn time_column(mut self, field: impl Into<String>, heading: impl Into<String>) -> Self {
        self.columns.push(Column {
            field: field.into(),
            heading: heading.into(),
            kind: "time",
        });
        self
    }

    /// Shows the answer's string field `field` above the table.
    pub fn summary(mut self, field: impl Into<String>) -> Self {
        self.summary = Some(field.into());
        self
    }

    /// Read with the admin token (see [`require_admin`]).
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }
}

impl std::fmt::Debug for ApiMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiMount")
    }
}

/// Starts the server on the current actix system; answers its handle (stop it at shutdown).
pub(crate) fn start(
    api: &HttpConfig,
    bots: Vec<(Health, Heartbeat)>,
    log: Option<HealingLog>,
    mounts: Vec<ApiMount>,
) -> std::io::Result<actix_web::dev::ServerHandle> {
    let bots: Vec<Bot> = bots
        .into_iter()
        .map(|(health, beat)| Bot { health, beat })
        .collect();
    let collector = Metrics(bots.iter().map(|b| b.health.clone()).collect());
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let panels: Vec<Panel> = mounts
        .iter()
        .flat_map(|m| m.panels.iter().cloned())
        .filter(|p| p.path.starts_with("/api/"))
        .collect();
    let shared = web::Data::new(Shared {
        bots,
        log,
        panels,
        token: api.admin_token.clone(),
        registry,
        hosts: api.hosts.clone(),
        guesses: Guesses::new(),
    });
    let listen = api.listen;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(shared.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                actix_web::error::InternalError::from_response(
                    e.to_string(),
                    error(StatusCode::BAD_REQUEST, &format!("bad query: {e}")),
                )
                .into()
            }))
            .wrap(actix_web::middleware::from_fn(check_host))
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add((header::CACHE_CONTROL, "no-store"))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::REFERRER_POLICY, "no-referrer")),
            )
            .service(get("/", page))
            .service(get("/livez", livez))
            .service(get("/readyz", readyz))
            .service(get("/metrics", metrics))
            .service(get("/api/v1/health", health))
            .service(get("/api/v1/circuit-breakers", breakers))
            .service(get("/api/v1/healing-log", healing_log))
            .service(get("/api/v1/panels", list_panels))
            .service(
                web::resource("/api/v1/heal/{bot}/{subsystem}")
                    .route(web::post().to(heal))
                    .default_service(web::to(|| async { not_allowed("POST") })),
            )
            .configure(|c| {
                for m in &mounts {
                    (m.routes)(c);
                }
            })
            .default_service(web::to(|| async {
                error(
                    StatusCode::NOT_FOUND,
                    "no such page; the API is under /api/v1/",
                )
            }))
    })
    .workers(1)
    .max_connections(MAX_CONNECTIONS)
    .disable_signals()
    .shutdown_timeout(1)
    .client_request_timeout(Duration::from_secs(5))
    .client_disconnect_timeout(Duration::from_secs(1))
    .keep_alive(KeepAlive::Timeout(Duration::from_secs(15)))
    .backlog(2048)
    .bind(listen)
    .map_err(|e| std::io::Error::new(e.kind(), format!("[http] listen {listen}: {e}")))?
    .run();
    let handle = server.handle();
    actix::spawn(server);
    tracing::info!(%listen, "status API listening");
    Ok(handle)
}

/// A GET resource; other methods get 405.
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(|| async { not_allowed("GET") }))
}

fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

fn not_allowed(allow: &'static str) -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, allow))
        .json(json!({ "error": format!("method not allowed; use {allow}") }))
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn worst(snaps: &[Snapshot]) -> BotHealth {
    snaps
        .iter()
        .map(|s| s.health)
        .max()
        .unwrap_or(BotHealth::Healthy)
}

fn snapshots(shared: &Shared) -> Vec<Snapshot> {
    shared.bots.iter().map(|b| b.health.snapshot()).collect()
}

fn actor_of<'a>(s: &'a Snapshot, subsystem: &str) -> Option<&'a ActorStatus> {
    s.actors.iter().find(|a| a.subsystem() == subsystem)
}

fn bot_json(s: &Snapshot) -> Value {
    let transport = s.actor(ActorKind::Transport, &s.transport);
    let subsystems: Vec<Value> = s
        .subsystems
        .iter()
        .map(|sub| {
            let mut v = json!({
                "name": sub.name,
                "health": sub.health.as_str(),
                "state": sub.state,
            });
            if let Some(a) = actor_of(s, &sub.name) {
                v["restarts"] = json!(a.restarts);
                v["handled"] = json!(a.handled);
                v["last_error"] = json!(a.last_error.as_ref().map(|(_, e)| e));
                v["last_error_at"] = json!(a.last_error.as_ref().map(|(t, _)| time(*t)));
            } else if let Some(b) = s
                .breakers
                .iter()
                .find(|b| sub.name.strip_prefix("breaker:") == Some(b.name.as_str()))
            {
                v["failures"] = json!(b.failures);
                v["last_error"] = json!(b.last_error.as_ref().map(|(_, e)| e));
                v["last_error_at"] = json!(b.last_error.as_ref().map(|(t, _)| time(*t)));
            } else if sub.name == "store" {
                v["detail"] = json!(s.store);
            }
            v
        })
        .collect();
    json!({
        "bot": s.bot,
        "state": s.health.as_str(),
        "summary": s.summary(),
        "uptime_secs": s.uptime.as_secs(),
        "failed": s.failed,
        "transport": {
            "kind": s.transport,
            "connection": transport.and_then(|t| t.conn.as_ref()).map_or("starting", ConnState::as_str),
            "detail": transport.and_then(|t| t.detail.clone()),
            "reconnects": transport.map_or(0, |t| t.reconnects),
        },
        "lead": s.lead.as_ref().map(|l| json!({
            "me": l.me,
            "held": l.held,
            "holder": l.holder.as_ref().map(|h| h.id.clone()),
            "since_unix": l.holder.as_ref().and_then(|h| h.since.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
        })),
        "subsystems": subsystems,
        "messages_in": s.inbound,
        "outbox": {
            "queued": s.outbox.queued,
            "sent": s.outbox.sent,
            "dropped": s.outbox.dropped_total(),
            "dropped_by_reason": s
                .outbox
                .dropped_by_reason()
                .iter()
                .map(|(reason, n)| ((*reason).to_owned(), json!(n)))
                .collect::<serde_json::Map<String, Value>>(),
        },
    })
}

/// The page's Content-Security-Policy: its one script is allowed by its hash, so markup that
/// ever slipped into the page (an alert's text, say) could run nothing, not even an inline
/// event handler.
static PAGE_POLICY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use base64::Engine as _;
    use sha2::Digest as _;
    let script = PAGE
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(script, _)| script);
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
});

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, PAGE_POLICY.as_str()))
        .body(PAGE)
}

async fn list_panels(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "panels": shared.panels }))
}

async fn health(shared: web::Data<Shared>) -> HttpResponse {
    let snaps = snapshots(&shared);
    HttpResponse::Ok().json(json!({
        "state": worst(&snaps).as_str(),
        "bots": snaps.iter().map(bot_json).collect::<Vec<_>>(),
    }))
}

async fn breakers(shared: web::Data<Shared>) -> HttpResponse {
    let now = SystemTime::now();
    let list: Vec<Value> = snapshots(&shared)
        .iter()
        .flat_map(|s| {
            s.breakers.iter().map(|b| {
                let retry_at = match b.state {
                    BreakerState::Open { until } => Some(until),
                    _ => None,
                };
                json!({
                    "bot": s.bot,
                    "name": b.name,
                    "site": b.site,
                    "state": b.state.as_str(),
                    "failures": b.failures,
                    "opened": b.opened,
                    "retry_at": retry_at.map(time),
                    "retry_in_secs": retry_at.map(|t| t.duration_since(now).unwrap_or_default().as_secs()),
                    "last_error": b.last_error.as_ref().map(|(_, e)| e),
                    "last_error_at": b.last_error.as_ref().map(|(t, _)| time(*t)),
                })
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "breakers": list }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    limit: Option<usize>,
    bot: Option<String>,
}

async fn healing_log(shared: web::Data<Shared>, q: web::Query<LogQuery>) -> HttpResponse {
    let LogQuery { limit, bot } = q.into_inner();
    let limit = limit.unwrap_or(200);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("limit must be 1 to {MAX_LIMIT}"),
        );
    }
    let entries: Vec<Value> = match shared.log.clone() {
        Some(log) => {
            let read = web::block(move || log.read(limit, bot.as_deref())).await;
            match read {
                Ok(Ok(records)) => records
                    .into_iter()
                    .map(|r| {
                        json!({
                            "seq": r.seq,
                            "at": time(SystemTime::UNIX_EPOCH + Duration::from_millis(r.at_ms)),
                            "bot": r.bot,
                            "subsystem": r.subsystem,
                            "action": r.action,
                            "detail": r.detail,
                            "state": r.state,
                        })
                    })
                    .collect(),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "healing log: cannot read");
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the healing log cannot be read",
                    );
                }
                Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "busy"),
            }
        }
        // Not persisted: what each bot keeps in memory.
        None => {
            let mut all: Vec<(SystemTime, Value)> = snapshots(&shared)
                .into_iter()
                .filter(|s| bot.as_deref().is_none_or(|b| b == s.bot))
                .flat_map(|s| {
                    let name = s.bot.clone();
                    s.healing_log.into_iter().map(move |e| {
                        let v = json!({
                            "seq": null,
                            "at": time(e.at),
                            "bot": name,
                            "subsystem": e.subsystem,
                            "action": e.action,
                            "detail": e.detail,
                            "state": e.state.as_str(),
                        });
                        (e.at, v)
                    })
                })
                .collect();
            all.sort_by_key(|e| std::cmp::Reverse(e.0));
            all.into_iter().take(limit).map(|(_, v)| v).collect()
        }
    };
    HttpResponse::Ok().json(json!({
        "persisted": shared.log.is_some(),
        "entries": entries,
    }))
}

/// The optional body of a heal: who asks and why, for the healing log.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HealBody {
    by: Option<String>,
    reason: Option<String>,
}

/// Keeps a caller's text to one short printable line.
fn clean(s: &str, max: usize) -> String {
    crate::text::printable(s)
        .chars()
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// `None` when `req` carries the admin token; else the answer to give (401 without one, 403
/// for a wrong one, 429 for an address that sent too many wrong ones). `off` says what is not
/// served when no token is configured.
fn admin_check(shared: &Shared, req: &HttpRequest, off: &str) -> Option<HttpResponse> {
    let Some(token) = &shared.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            &format!("{off}: the config's [http] table has no admin_token"),
        ));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .and_then(|h| {
            let (scheme, rest) = h.split_at_checked(7)?;
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        });
    let ip = req.peer_addr().map(|a| a.ip());
    let too_many = |wait: Duration| {
        HttpResponse::TooManyRequests()
            .insert_header((header::RETRY_AFTER, wait.as_secs().max(1).to_string()))
            .json(json!({ "error": "too many wrong tokens from this address; wait and try again" }))
    };
    if let Some(wait) = ip.and_then(|ip| shared.guesses.refused_for(ip)) {
        return Some(too_many(wait));
    }
    let Some(given) = given else {
        return Some(
            HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"opsbot\""))
                .json(json!({ "error": "an admin token is needed: Authorization: Bearer TOKEN" })),
        );
    };
    if !bool::from(given.ct_eq(token.expose().as_bytes())) {
        if let Some(ip) = ip
            && shared.guesses.wrong(ip)
        {
            tracing::warn!(%ip, "too many wrong admin tokens; refusing this address for a minute");
            return Some(too_many(GUESSER_WAIT));
        }
        return Some(error(StatusCode::FORBIDDEN, "wrong token"));
    }
    None
}

/// For routes of an [`ApiMount`]: `None` when `req` carries the `[http] admin_token`, checked
/// as the framework's own routes check it (in constant time; an address that sends too many
/// wrong tokens is refused for a minute, on every route); else the answer to give: 401 without
/// a token, 403 for a wrong one or when none is configured (`off` says what is then not
/// served), 429 while the address is refused.
pub fn require_admin(req: &HttpRequest, off: &str) -> Option<HttpResponse> {
    match req.app_data::<web::Data<Shared>>() {
        Some(shared) => admin_check(shared, req, off),
        None => Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "not a route of the status API",
        )),
    }
}

async fn heal(
    shared: web::Data<Shared>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    // Who is asking comes first: nothing about bots or subsystems is told before that.
    if let Some(refused) = admin_check(&shared, &req, "forced heals are off") {
        return refused;
    }
    let body: HealBody = if body.iter().all(u8::is_ascii_whitespace) {
        HealBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "the body must be JSON like {{\"by\": \"alice\", \"reason\": \"...\"}}: {e}"
                    ),
                );
            }
        }
    };
    let (bot, subsystem) = path.into_inner();
    let Some(b) = shared.bots.iter().find(|b| b.health.bot() == bot) else {
        let names: Vec<&str> = shared.bots.iter().map(|b| b.health.bot()).collect();
        return error(
            StatusCode::NOT_FOUND,
            &format!("no bot `{}`; bots: {}", clean(&bot, 64), names.join(", ")),
        );
    };
    let peer = req
        .peer_addr()
        .map_or_else(|| "?".to_owned(), |a| a.ip().to_string());
    let by = body
        .by
        .as_deref()
        .map(|b| clean(b, 64))
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "the admin token".to_owned());
    let mut who = format!("{by} over HTTP from {peer}");
    if let Some(reason) = body.reason.as_deref().map(|r| clean(r, 200))
        && !reason.is_empty()
    {
        who.push_str(&format!(" ({reason})"));
    }
    match b.health.heal(&subsystem, &who) {
        Ok(name) => HttpResponse::Ok().json(json!({
            "bot": bot,
            "subsystem": name,
            "healed": true,
            "by": who,
        })),
        Err(e @ (HealError::Unknown { .. } | HealError::Ambiguous { .. })) => {
            let status = match e {
                HealError::Unknown { .. } => StatusCode::NOT_FOUND,
                HealError::Ambiguous { .. } => StatusCode::CONFLICT,
            };
            error(status, &e.to_string())
        }
    }
}

async fn livez(shared: web::Data<Shared>) -> HttpResponse {
    let mut problems = Vec::new();
    for b in &shared.bots {
        let age = b.beat.age();
        if age > LIVE_LIMIT {
            problems.push(format!(
                "bot {}: thread silent for {}s",
                b.health.bot(),
                age.as_secs()
            ));
        }
        if let Some(why) = b.health.snapshot().failed {
            problems.push(format!("bot {}: failed: {why}", b.health.bot()));
        }
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(json!({ "live": problems.is_empty(), "problems": problems }))
}

async fn readyz(shared: web::Data<Shared>) -> HttpResponse {
    let waiting: Vec<String> = snapshots(&shared)
        .iter()
        .filter_map(|s| {
            let conn = s
                .actor(ActorKind::Transport, &s.transport)
                .and_then(|t| t.conn.clone());
            match conn {
                // A standby is ready: it takes over the moment the lead is its own, and a
                // rolling update must not wait on it.
                Some(ConnState::Connected | ConnState::Standby) => None,
                c => Some(format!(
                    "bot {}: transport {}",
                    s.bot,
                    c.as_ref().map_or("starting", ConnState::as_str)
                )),
            }
        })
        .collect();
    let status = if waiting.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(json!({ "ready": waiting.is_empty(), "waiting": waiting }))
}

/// The status page: no build step, no external assets, no secrets; it reads the API.
const PAGE: &str = include_str!("status_page.html");

#[cfg(test)]
mod host_tests {
    use super::host_allowed;

    #[test]
    fn addresses_localhost_and_listed_names_are_the_only_hosts() {
        let hosts = vec!["opsbot.internal.example".to_owned()];
        for ok in [
            "127.0.0.1:9120",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:9120",
            "[fe80::1]",
            "localhost:9120",
            "LOCALHOST",
            "status.localhost:1",
            "opsbot.internal.example:9120",
            "Opsbot.Internal.Example.",
        ] {
            assert!(host_allowed(ok, &hosts), "{ok}");
        }
        for bad in [
            "rebind.attacker.example",
            "rebind.attacker.example:9120",
            "127.0.0.1.nip.io",
            "localhost.attacker.example",
            "[::1",
            "[evil]:80",
            "opsbot.internal.example.attacker.example",
            "",
        ] {
            assert!(!host_allowed(bad, &hosts), "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::metrics::lv;
    use super::*;

    #[test]
    fn label_values_cannot_break_the_text_format() {
        assert_eq!(lv("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn callers_text_is_one_short_line() {
        assert_eq!(clean("al\nice\u{7}", 64), "alice");
        assert_eq!(clean(&"x".repeat(100), 5), "xxxxx");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "src=", "@import", "url("] {
            assert!(
                !PAGE.contains(needle),
                "the page must be self-contained: {needle}"
            );
        }
        assert!(
            !PAGE.contains("innerHTML"),
            "text goes in as text, never as markup"
        );
    }
}
