//! The engine's part of the status API:
//!
//! - `POST /api/v1/alerts/alertmanager`: Alertmanager's webhook, with the bearer token of
//!   `[engine] alertmanager_token` (Alertmanager's `http_config.authorization`);
//! - `POST /api/v1/events/{source}`: anything else, signed (see [`crate::signature`]) with
//!   `[engine.source.NAME] secret`; the body is `{"id": "…", "status": "firing"|"resolved",
//!   "labels": {…}, "annotations": {…}}`, and goes through the routes and rules as an alert
//!   with the label `source` set to the source's name;
//! - `GET /api/v1/audit`: the audit trail, newest first, with whether its chain holds
//!   (`[http] admin_token`, checked as the framework checks it); also a panel of the status
//!   page, which asks for the token.
//!
//! Every refusal is a 4xx with a JSON `{"error": "…"}` that says why; nothing of a refused
//! request is kept.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};
use opsbot::status_api::{ApiMount, Panel, require_admin};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::alert::{Alert, Notification, Pairs, Status};
use crate::driver::{Engine, now_ms};
use crate::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};

fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

/// Whether the request carries `Authorization: Bearer <token>` (compared in constant time).
fn bearer_ok(req: &HttpRequest, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

impl Engine {
    /// The engine's routes, for [`opsbot::RunOptions::api`].
    pub fn mount(&self) -> ApiMount {
        let engine = self.clone();
        ApiMount::new(move |c| {
            let limit = engine.shared.bounds.max_body_bytes;
            c.app_data(web::Data::new(engine.clone()))
                .service(
                    web::resource("/api/v1/alerts/alertmanager")
                        .app_data(web::PayloadConfig::new(limit))
                        .route(web::post().to(alertmanager))
                        .default_service(web::to(|| async {
                            error(StatusCode::METHOD_NOT_ALLOWED, "use POST")
                        })),
                )
                .service(
                    web::resource("/api/v1/events/{source}")
                        .app_data(web::PayloadConfig::new(limit))
                        .route(web::post().to(event))
                        .default_service(web::to(|| async {
                            error(StatusCode::METHOD_NOT_ALLOWED, "use POST")
                        })),
                )
                .service(
                    web::resource("/api/v1/audit")
                        .route(web::get().to(audit))
                        .default_service(web::to(|| async {
                            error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
                        })),
                );
        })
        .panel(
            Panel::new("Audit", "/api/v1/audit?limit=25", "entries")
                .summary("summary")
                .column("seq", "#")
                .time_column("at_ms", "UTC")
                .column("step", "step")
                .column("who", "who")
                .column("subject", "subject")
                .column("detail", "detail")
                .admin(),
        )
    }
}

async fn alertmanager(
    engine: web::Data<Engine>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let token = engine.config().alertmanager_token.clone();
    let Some(token) = token else {
        return error(
            StatusCode::UNAUTHORIZED,
            "no [engine] alertmanager_token is configured: alerts are refused",
        );
    };
    if !bearer_ok(&req, token.expose()) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let n = match Notification::parse(&body, &engine.shared.bounds) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.0),
    };
    match engine.alerts(n).await {
        Ok(count) => HttpResponse::Ok().json(json!({ "alerts": count })),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// A signed event's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    id: String,
    #[serde(default = "firing")]
    status: Status,
    #[serde(default)]
    labels: Pairs,
    #[serde(default)]
    annotations: Pairs,
}

fn firing() -> Status {
    Status::Firing
}

async fn event(
    engine: web::Data<Engine>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let source = path.into_inner();
    let config = engine.config();
    let Some(s) = config.sources.get(&source) else {
        return error(StatusCode::NOT_FOUND, "no such event source");
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let now = now_ms() / 1000;
    if let Err(e) = engine.shared.verifier.verify(
        s.secret.expose().as_bytes(),
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        now,
    ) {
        return error(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    let ev: Event = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("not an event ({{\"id\", \"status\", \"labels\", \"annotations\"}}): {e}"),
            );
        }
    };
    if ev.id.is_empty() || ev.id.len() > 256 {
        return error(StatusCode::BAD_REQUEST, "id must be 1 to 256 bytes");
    }
    let mut labels = ev.labels;
    labels.insert("source".into(), source.clone());
    let alert = Alert {
        status: ev.status,
        labels,
        annotations: ev.annotations,
        starts_at: ev.id.clone(),
        ends_at: String::new(),
        generator_url: String::new(),
        fingerprint: short_hash(&format!("{source}\u{1f}{}", ev.id)),
    };
    let n = Notification {
        version: "4".into(),
        group_key: format!("event:{source}:{}", ev.id),
        truncated_alerts: 0,
        status: ev.status,
        receiver: source,
        group_labels: BTreeMap::new(),
        common_labels: BTreeMap::new(),
        common_annotations: BTreeMap::new(),
        external_url: String::new(),
        alerts: vec![alert],
    };
    // The same bounds as Alertmanager's payloads.
    let checked = serde_json::to_vec(&n)
        .map_err(|e| e.to_string())
        .and_then(|b| Notification::parse(&b, &engine.shared.bounds).map_err(|e| e.0));
    let n = match checked {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match engine.alerts(n).await {
        Ok(_) => HttpResponse::Ok().json(json!({ "accepted": true })),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    engine: web::Data<Engine>,
    req: HttpRequest,
    q: web::Query<AuditQuery>,
) -> HttpResponse {
    if let Some(refused) = require_admin(&req, "the audit is not served") {
        return refused;
    }
    let Some(trail) = engine
        .shared
        .audit
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the engine is not running");
    };
    let limit = q.limit.unwrap_or(100).min(1000);
    let answer = web::block(move || (trail.newest(limit), trail.verify())).await;
    match answer {
        Ok((Ok(entries), verified)) => HttpResponse::Ok().json(json!({
            "summary": match &verified {
                Ok(n) => format!("the chain holds: {n} entries"),
                Err(b) => format!("THE CHAIN IS BROKEN at entry {}: {}", b.seq, b.why),
            },
            "chain": match verified {
                Ok(n) => json!({ "intact": true, "entries": n }),
                Err(b) => json!({ "intact": false, "first_bad": b.seq, "why": b.why }),
            },
            "entries": entries,
        })),
        Ok((Err(e), _)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
