//! An action's record: everything needed to show, approve, run and account for one action,
//! serialisable so that it can be stored, and sent to another process as it is.

use serde::{Deserialize, Serialize};

use crate::action::{Outcome, Plan};

/// Where an action stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for approvals.
    Awaiting,
    /// Approved (or needing none), not started.
    Approved,
    /// Started: the side effect may be under way.
    Running,
    /// Finished and succeeded.
    Succeeded,
    /// Finished and failed, or could not start.
    Failed,
    /// Denied by an approver.
    Denied,
    /// Its approval request expired.
    Expired,
    /// Found started but unfinished after a restart: whether it acted is not known.
    Unknown,
    /// A dry run: shown, never run.
    DryRun,
}

impl State {
    /// Whether nothing more will happen to it.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Awaiting | State::Approved | State::Running)
    }

    /// Its name in chat and the audit.
    pub fn name(self) -> &'static str {
        match self {
            State::Awaiting => "awaiting approval",
            State::Approved => "approved",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Unknown => "outcome unknown",
            State::DryRun => "dry run",
        }
    }
}

/// One action, from its request to its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// Its number (`A12` in chat).
    pub id: u64,
    /// What makes it unique: the rule, the alert's fingerprint and start (or the manual
    /// request's id). An action is never created twice for one key.
    pub key: String,
    /// The rule.
    pub rule: String,
    /// What it does.
    pub plan: Plan,
    /// The plan in one line.
    pub plan_line: String,
    /// What it acts on (for the cool-down).
    pub target: String,
    /// What triggered it, in one line.
    pub trigger: String,
    /// The bot that speaks about it, and where.
    pub bot: String,
    /// The room.
    pub room: String,
    /// Who asked for it by hand (they may not approve it).
    pub requested_by: Option<String>,
    /// The approver list's name.
    pub approvers: Option<String>,
    /// How many approvals it needs.
    pub needed: usize,
    /// Who approved it, in order.
    pub approved_by: Vec<String>,
    /// Where it stands.
    pub state: State,
    /// Whether it may run again if found unfinished after a restart.
    pub safe_to_repeat: bool,
    /// When it was created, in Unix milliseconds.
    pub created_ms: u64,
    /// When its approval request expires.
    pub expires_ms: u64,
    /// When it started.
    pub started_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// What it came to.
    pub outcome: Option<Outcome>,
    /// Why it was denied, who denied it.
    pub note: Option<String>,
    /// The fingerprint of the alert that triggered it (empty for a request by hand).
    #[serde(default)]
    pub fingerprint: String,
    /// How long to wait, after a successful run, for that alert to resolve (0: not checked).
    #[serde(default)]
    pub verify_secs: u64,
    /// Until when the engine waits for the resolution.
    #[serde(default)]
    pub verify_by_ms: Option<u64>,
    /// Whether the alert resolved in time, once known.
    #[serde(default)]
    pub verified: Option<bool>,
}

impl ActionRecord {
    /// Its name in chat.
    pub fn label(&self) -> String {
        format!("A{}", self.id)
    }

    /// The store key: the number, zero-padded so that keys sort as numbers.
    pub fn store_key(id: u64) -> String {
        format!("{id:016}")
    }
}

/// Reads `A12` or `12` as an action number.
pub fn parse_label(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.strip_prefix(['A', 'a']).unwrap_or(t);
    digits.parse().ok()
}
