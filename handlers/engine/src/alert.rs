//! Alertmanager's webhook payload (version 4), read with bounds: a payload that is too large,
//! too deep, of another version or with a field of the wrong shape is refused whole, with a
//! message that names what is wrong, before anything of it is acted on.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Bounds on one webhook payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// The largest body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The most alerts in one notification.
    pub max_alerts: usize,
    /// The most labels, or annotations, on one alert or group.
    pub max_pairs: usize,
    /// The longest label or annotation name, in bytes.
    pub max_name_bytes: usize,
    /// The longest label value, in bytes (annotations may be 8 times longer).
    pub max_value_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_alerts: 1000,
            max_pairs: 64,
            max_name_bytes: 128,
            max_value_bytes: 1024,
        }
    }
}

/// Whether an alert, or a whole group, is firing or resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Still firing.
    Firing,
    /// Resolved.
    Resolved,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        })
    }
}

/// Labels or annotations: names to values, in name order.
pub type Pairs = BTreeMap<String, String>;

/// One alert of a notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Firing or resolved.
    pub status: Status,
    /// Its labels (its identity).
    pub labels: Pairs,
    /// Its annotations (summary, description, runbook…).
    #[serde(default)]
    pub annotations: Pairs,
    /// When it started firing, as Alertmanager wrote it (RFC 3339).
    pub starts_at: String,
    /// When it ended, or Go's zero time while it fires.
    #[serde(default)]
    pub ends_at: String,
    /// A link to the rule's expression in Prometheus.
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Alertmanager's hash of the labels.
    pub fingerprint: String,
}

/// One webhook notification: a group of alerts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Always `"4"`.
    pub version: String,
    /// Identifies the group (stable across the group's notifications).
    pub group_key: String,
    /// How many alerts Alertmanager left out (its `max_alerts`).
    #[serde(default)]
    pub truncated_alerts: u64,
    /// Firing if any alert of the group fires.
    pub status: Status,
    /// The receiver's name in Alertmanager's config.
    #[serde(default)]
    pub receiver: String,
    /// The labels the group is grouped by.
    #[serde(default)]
    pub group_labels: Pairs,
    /// Labels every alert of the group has.
    #[serde(default)]
    pub common_labels: Pairs,
    /// Annotations every alert of the group has.
    #[serde(default)]
    pub common_annotations: Pairs,
    /// Alertmanager's own address.
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    /// The alerts.
    pub alerts: Vec<Alert>,
}

/// Why a payload was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

impl Notification {
    /// Reads a webhook body, checking it against `bounds`.
    pub fn parse(body: &[u8], bounds: &Bounds) -> Result<Self, Invalid> {
        if body.len() > bounds.max_body_bytes {
            return Err(Invalid(format!(
                "the body is {} bytes, more than the {} allowed",
                body.len(),
                bounds.max_body_bytes
            )));
        }
        let n: Notification = serde_json::from_slice(body).map_err(|e| {
            Invalid(format!(
                "not an Alertmanager webhook payload: {}",
                short(&e.to_string())
            ))
        })?;
        n.check(bounds)?;
        Ok(n)
    }

    fn check(&self, b: &Bounds) -> Result<(), Invalid> {
        if self.version != "4" {
            return Err(Invalid(format!(
                "version {:?}: only version 4 of the webhook payload is understood",
                short(&self.version)
            )));
        }
        if self.group_key.is_empty() || self.group_key.len() > 4096 {
            return Err(Invalid("groupKey must be 1 to 4096 bytes".into()));
        }
        if self.alerts.is_empty() {
            return Err(Invalid("no alerts in the notification".into()));
        }
        if self.alerts.len() > b.max_alerts {
            return Err(Invalid(format!(
                "{} alerts, more than the {} allowed in one notification",
                self.alerts.len(),
                b.max_alerts
            )));
        }
        pairs("groupLabels", &self.group_labels, b, 1)?;
        pairs("commonLabels", &self.common_labels, b, 1)?;
        pairs("commonAnnotations", &self.common_annotations, b, 8)?;
        for (i, a) in self.alerts.iter().enumerate() {
            pairs(&format!("alerts[{i}].labels"), &a.labels, b, 1)?;
            pairs(&format!("alerts[{i}].annotations"), &a.annotations, b, 8)?;
            if a.fingerprint.is_empty() || a.fingerprint.len() > 64 {
                return Err(Invalid(format!(
                    "alerts[{i}].fingerprint must be 1 to 64 bytes"
                )));
            }
            if a.starts_at.is_empty() || a.starts_at.len() > 64 {
                return Err(Invalid(format!(
                    "alerts[{i}].startsAt must be 1 to 64 bytes"
                )));
            }
            if a.ends_at.len() > 64 || a.generator_url.len() > 4096 {
                return Err(Invalid(format!(
                    "alerts[{i}]: endsAt or generatorURL is too long"
                )));
            }
        }
        if self.external_url.len() > 4096 || self.receiver.len() > 256 {
            return Err(Invalid("externalURL or receiver is too long".into()));
        }
        Ok(())
    }
}

impl Alert {
    /// A firing alert with these labels and nothing else: what a request by hand is matched
    /// and routed as.
    pub fn from_labels(labels: Pairs) -> Self {
        Self {
            status: Status::Firing,
            labels,
            annotations: Pairs::new(),
            starts_at: String::new(),
            ends_at: String::new(),
            generator_url: String::new(),
            fingerprint: String::new(),
        }
    }

    /// A label, or else an annotation, by name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.labels
            .get(name)
            .or_else(|| self.annotations.get(name))
            .map(String::as_str)
    }

    /// What makes one delivery of this alert's state unique: Alertmanager replicas in a
    /// cluster send the same alert with the same fingerprint, start and status.
    pub fn identity(&self, group_key: &str) -> String {
        format!(
            "{group_key}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.fingerprint, self.starts_at, self.status
        )
    }

    /// The alert's name (`alertname`), or `alert`.
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("alert", String::as_str)
    }
}

fn pairs(what: &str, p: &Pairs, b: &Bounds, value_factor: usize) -> Result<(), Invalid> {
    if p.len() > b.max_pairs {
        return Err(Invalid(format!(
            "{what}: {} entries, more than the {} allowed",
            p.len(),
            b.max_pairs
        )));
    }
    for (k, v) in p {
        if k.is_empty() || k.len() > b.max_name_bytes {
            return Err(Invalid(format!(
                "{what}: a name must be 1 to {} bytes",
                b.max_name_bytes
            )));
        }
        if v.len() > b.max_value_bytes * value_factor {
            return Err(Invalid(format!(
                "{what}.{}: the value is longer than {} bytes",
                short(k),
                b.max_value_bytes * value_factor
            )));
        }
    }
    Ok(())
}

/// At most 120 characters of `s`, for an error message.
fn short(s: &str) -> String {
    let mut out: String = s.chars().take(120).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> String {
        r#"{"receiver":"opsbot","status":"firing","alerts":[{"status":"firing",
        "labels":{"alertname":"DiskFull","instance":"db1","severity":"page"},
        "annotations":{"summary":"disk 97% full"},"startsAt":"2026-12-06T10:00:00Z",
        "endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prom/graph","fingerprint":"a1b2"}],
        "groupLabels":{"alertname":"DiskFull"},"commonLabels":{"alertname":"DiskFull"},
        "commonAnnotations":{},"externalURL":"http://am:9093","version":"4",
        "groupKey":"{}:{alertname=\"DiskFull\"}","truncatedAlerts":0}"#
            .to_owned()
    }

    #[test]
    fn reads_alertmanagers_payload() {
        let n = Notification::parse(sample().as_bytes(), &Bounds::default()).unwrap();
        assert_eq!(n.status, Status::Firing);
        assert_eq!(n.alerts[0].get("instance"), Some("db1"));
        assert_eq!(n.alerts[0].get("summary"), Some("disk 97% full"));
        assert_eq!(n.alerts[0].generator_url, "http://prom/graph");
        assert_eq!(n.external_url, "http://am:9093");
    }

    #[test]
    fn refuses_what_is_out_of_bounds_or_of_another_shape() {
        let b = Bounds::default();
        let bad = |body: String, want: &str| {
            let e = Notification::parse(body.as_bytes(), &b).unwrap_err();
            assert!(e.0.contains(want), "{e} does not say {want}");
        };
        bad(sample().replace("\"4\"", "\"3\""), "version");
        bad(
            sample().replace("\"firing\",\n", "\"burning\",\n"),
            "unknown variant",
        );
        bad(
            sample().replace("\"db1\"", "{\"x\":1}"),
            "not an Alertmanager",
        );
        bad("[".repeat(10_000), "not an Alertmanager");
        bad(
            sample().replace("disk 97% full", &"x".repeat(9000)),
            "longer than",
        );
        let tight = Bounds {
            max_body_bytes: 100,
            ..b
        };
        let e = Notification::parse(sample().as_bytes(), &tight).unwrap_err();
        assert!(e.0.contains("more than the 100 allowed"), "{e}");
    }

    #[test]
    fn replicas_deliveries_of_one_state_share_an_identity() {
        let n = Notification::parse(sample().as_bytes(), &Bounds::default()).unwrap();
        let mut resolved = n.alerts[0].clone();
        resolved.status = Status::Resolved;
        assert_eq!(n.alerts[0].identity("g"), n.alerts[0].clone().identity("g"));
        assert_ne!(n.alerts[0].identity("g"), resolved.identity("g"));
    }
}
