//! Setting up: who the bot is (`people/me`), its device (registered once, kept across
//! reconnects), and the Mercury WebSocket, with every setup error a clear refusal or retry.

use super::*;

#[derive(Clone, Debug)]
pub(super) struct Device {
    pub(super) ws_url: String,
}

/// Who the bot is.
#[derive(Clone, Debug, Default)]
pub(super) struct Me {
    pub(super) id: String,
    /// The person's UUID inside the id, which events name actors by.
    pub(super) uuid: String,
    pub(super) emails: Vec<String>,
    pub(super) name: String,
}

impl Me {
    pub(super) fn is(&self, id: &str, email: &str) -> bool {
        (!id.is_empty() && (id == self.id || id == self.uuid))
            || (!email.is_empty() && self.emails.iter().any(|e| e.eq_ignore_ascii_case(email)))
    }
}

/// The REST side, for one bot: its token, its throttle, the shared client.
pub(super) struct Api {
    pub(super) http: Arc<HttpClient>,
    pub(super) throttle: Throttle,
    pub(super) token: opsbot::config::Secret,
    pub(super) rest: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("rest", &self.rest).finish()
    }
}

impl Api {
    pub(super) async fn get(&self, url: &str) -> Result<HttpResponse, HttpError> {
        let auth = format!("Bearer {}", self.token.expose());
        self.http
            .send(&self.throttle, Repeat::Safe, url, |c| {
                c.get(url)
                    .header("Authorization", &auth)
                    .header("Accept", "application/json")
            })
            .await
    }

    pub(super) async fn post(&self, url: &str, body: &Value) -> Result<HttpResponse, HttpError> {
        let auth = format!("Bearer {}", self.token.expose());
        let body = body.to_string();
        self.http
            .send(&self.throttle, Repeat::IfNotSent, url, |c| {
                c.post(url)
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .body(body.clone())
            })
            .await
    }
}

/// What went wrong with a REST call during setup, as the session's end.
pub(super) fn setup_error(
    what: &str,
    r: Result<HttpResponse, HttpError>,
) -> Result<Value, TransportError> {
    match r {
        Err(e) => Err(TransportError::Connection(format!("{what}: {e}"))),
        Ok(resp) if matches!(resp.status, 401 | 403) => Err(TransportError::Refused(format!(
            "{what}: the token was refused ({})",
            resp.status
        ))),
        Ok(resp) if !resp.is_success() => Err(TransportError::Connection(format!(
            "{what}: HTTP {} {}",
            resp.status,
            resp.text(200)
        ))),
        Ok(resp) => serde_json::from_slice(&resp.body)
            .map_err(|e| TransportError::Connection(format!("{what}: unreadable answer: {e}"))),
    }
}

/// The device, if its WebSocket URL is one the token may go to: `wss` (or `ws` to this
/// machine when the device service is here too), on a Webex host or the device service's own.
pub(super) fn checked_socket(d: Device, wdm: &str) -> Result<Device, TransportError> {
    let from = opsbot::fetch::Url::parse(wdm)
        .map_err(|e| TransportError::Connection(format!("the device service's URL: {e}")))?;
    match config::served_url(&d.ws_url, "wss", "ws", &from) {
        Ok(_) => Ok(d),
        Err(why) => Err(TransportError::Connection(format!(
            "the device service handed over a WebSocket the token may not go to: {why}"
        ))),
    }
}

pub(super) fn device_of(v: &Value) -> Option<Device> {
    Some(Device {
        ws_url: v.get("webSocketUrl")?.as_str()?.to_owned(),
    })
}

pub(super) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Webex {
    pub(super) async fn me(&self) -> Result<Me, TransportError> {
        let url = format!("{}/people/me", self.api.rest);
        let v = setup_error("reading the bot's account", self.api.get(&url).await)?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let id = s("id");
        let emails = v
            .get("emails")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Me {
            uuid: uuid_of(&id).unwrap_or_default(),
            id,
            emails,
            name: s("displayName"),
        })
    }

    /// The device service: from the catalog when there is one (and it leads to Webex or the
    /// catalog's own host), else `wdm_url`.
    pub(super) async fn wdm(&self) -> String {
        let u2c = self.cfg.u2c_url.trim_end_matches('/');
        if !u2c.is_empty() {
            let url = format!("{u2c}/catalog?format=hostmap");
            match setup_error("reading the service catalog", self.api.get(&url).await) {
                Ok(v) => match v.pointer("/serviceLinks/wdm").and_then(Value::as_str) {
                    Some(wdm) => {
                        let from = opsbot::fetch::Url::parse(u2c).expect("checked u2c_url");
                        match config::served_url(wdm, "https", "http", &from) {
                            Ok(_) => return wdm.trim_end_matches('/').to_owned(),
                            Err(why) => tracing::warn!(
                                kind = "webex",
                                %why,
                                "the service catalog's device service is not used; using wdm_url"
                            ),
                        }
                    }
                    None => {
                        tracing::warn!(kind = "webex", "the service catalog names no wdm service");
                    }
                },
                Err(e) => tracing::warn!(kind = "webex", error = %e, "using wdm_url"),
            }
        }
        self.cfg.wdm_url.trim_end_matches('/').to_owned()
    }

    /// The bot's device: the one registered under our name, else a new one (`fresh`: always a
    /// new one, when the old one turned out stale).
    pub(super) async fn register(&mut self, fresh: bool) -> Result<Device, TransportError> {
        let wdm = self.wdm().await;
        let devices = format!("{wdm}/devices");
        if !fresh {
            let v = setup_error("listing devices", self.api.get(&devices).await)?;
            let found = v
                .get("devices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|d| {
                    d.get("name").and_then(Value::as_str) == Some(self.cfg.device_name.as_str())
                });
            if let Some(d) = found.and_then(device_of) {
                return checked_socket(d, &wdm);
            }
        }
        let body = json!({
            "deviceName": self.cfg.device_name,
            "deviceType": "DESKTOP",
            "localizedModel": "rust",
            "model": "rust",
            "name": self.cfg.device_name,
            "systemName": "opsbot",
            "systemVersion": env!("CARGO_PKG_VERSION"),
        });
        let v = setup_error("registering a device", self.api.post(&devices, &body).await)?;
        self.stats.registrations += 1;
        let d = device_of(&v).ok_or_else(|| {
            TransportError::Connection("the device registration named no webSocketUrl".into())
        })?;
        checked_socket(d, &wdm)
    }

    /// Opens and authorizes the device's socket (whose URL [`checked_socket`] passed);
    /// `Ok(None)` when the device is stale (404).
    pub(super) async fn open(&self, device: &Device) -> Result<Option<Socket>, TransportError> {
        let mut req = device
            .ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| TransportError::Connection(format!("webSocketUrl: {e}")))?;
        let auth = format!("Bearer {}", self.cfg.token.expose());
        req.headers_mut().insert(
            "Authorization",
            auth.parse()
                .map_err(|_| TransportError::Refused("the token is not a header value".into()))?,
        );
        let ws_config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let connector = tokio_tungstenite::Connector::Rustls(self.api.http.tls());
        let (mut ws, _) = match tokio_tungstenite::connect_async_tls_with_config(
            req,
            Some(ws_config),
            true,
            Some(connector),
        )
        .await
        {
            Ok(ok) => ok,
            Err(tungstenite::Error::Http(resp)) => {
                return match resp.status().as_u16() {
                    404 => Ok(None),
                    s @ (401 | 403) => Err(TransportError::Refused(format!(
                        "the WebSocket refused the token ({s})"
                    ))),
                    s => Err(TransportError::Connection(format!(
                        "the WebSocket upgrade answered HTTP {s}"
                    ))),
                };
            }
            Err(e) => return Err(TransportError::Connection(format!("WebSocket: {e}"))),
        };
        let frame = json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "authorization",
            "data": { "token": auth },
        });
        ws.send(Message::text(frame.to_string()))
            .await
            .map_err(|e| TransportError::Connection(format!("WebSocket: {e}")))?;
        Ok(Some(ws))
    }

    pub(super) fn detail(&self, me: &Me, device: &Device) -> String {
        let host = device
            .ws_url
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or("?");
        let s = &self.stats;
        let mut d = format!(
            "{} via {host} · device {} · received {} · duplicates {} · older than the bot {} · refused senders {} · unconfirmed replies {} · throttled {}",
            me.emails.first().map_or(me.name.as_str(), String::as_str),
            self.cfg.device_name,
            s.received,
            s.duplicates,
            s.old,
            s.refused_senders,
            s.unconfirmed,
            self.api.throttle.throttled(),
        );
        if let Some(wait) = self.api.throttle.remaining() {
            let _ = write!(d, " (holding {:.0}s)", wait.as_secs_f64().ceil());
        }
        if !self.slow.gap.is_zero() {
            let _ = write!(
                d,
                " · slowed to a reply per {:.1}s",
                self.slow.gap.as_secs_f64()
            );
        }
        d
    }
}
