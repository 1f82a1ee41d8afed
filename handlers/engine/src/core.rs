//! The engine's decisions, with no I/O of their own but the state store: given an alert
//! notification, an approval, a denial or the passing of time, it answers what to say where
//! and which actions to run. The driver ([`crate::Engine`]) carries those out.
//!
//! Exactly once: an action's idempotency key (rule, alert fingerprint, start; or the manual
//! request's id) is created in the store before anything else happens to the action, and the
//! action is marked running in the store before its side effect starts. The same alert sent
//! twice (Alertmanager replicas) finds its key taken; a process that stops mid-action finds
//! it running at the next start and reports "outcome unknown" rather than running it again,
//! unless its rule says it is safe to repeat.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use opsbot::card::Card;
use opsbot::message::Identity;
use opsbot::rich::{Line, Rich};
use opsbot::store::{Records, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::action::Outcome;
use crate::alert::{Alert, Notification, Status};
use crate::audit::Audit;
use crate::config::{Approval, EngineConfig, Rule};
use crate::record::{ActionRecord, State};

/// How long the identities of alerts already seen are kept (Alertmanager repeats a firing
/// group every `repeat_interval`, 4 hours by default).
const SEEN_FOR_MS: u64 = 7 * 24 * 3600 * 1000;
/// The most alerts named in one notification line.
const NAMED: usize = 5;
/// The most runs remembered per rule for its hourly cap.
const HOUR_MS: u64 = 3600 * 1000;

/// Something the driver does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Post `text` in `room` through `bot`.
    Say {
        /// The bot.
        bot: String,
        /// The room.
        room: String,
        /// The line, formatted.
        text: Rich,
    },
    /// Post a notification line about an alert group: in the group's thread where the
    /// transport has threads and its first message's id is known, else in the room (the
    /// line's `[G1]` refers to the first one).
    Notify {
        /// The bot.
        bot: String,
        /// The room.
        room: String,
        /// The id of the group's first message, to answer in its thread.
        thread: Option<String>,
        /// The group's key while its first message's id is unknown: the driver reports the id
        /// this line is given ([`Core::threaded`]), and later lines go to its thread.
        anchor: Option<String>,
        /// The line, formatted.
        text: Rich,
    },
    /// Ask for an approval: `card` where the bot's transport has cards (its buttons run
    /// `!approve` and `!deny`), `text` (which spells the commands out) elsewhere.
    Ask {
        /// The bot.
        bot: String,
        /// The room.
        room: String,
        /// The request as text.
        text: Rich,
        /// The request as a card.
        card: Box<Card>,
    },
    /// Run the action (already marked running in the store), then report with
    /// [`Core::finished`].
    Run(Box<ActionRecord>),
}

/// What an action is for: a line for people, and the alert's fingerprint.
#[derive(Clone, Debug)]
struct Trigger {
    text: String,
    fingerprint: String,
}

/// Who is speaking in chat, as the transport proved it.
#[derive(Clone, Debug)]
pub struct Person {
    /// The sender id (an IRC mask, a JID, an email).
    pub id: String,
    /// How ids are matched against list entries on this transport.
    pub identity: Identity,
    /// Whether the transport could prove the id.
    pub verified: bool,
}

/// A group's first notification, which its updates refer to.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct GroupNote {
    note: u64,
    bot: String,
    room: String,
    /// The id the service gave the group's first message (Webex), for its thread.
    #[serde(default)]
    thread: Option<String>,
}

/// The window of `storm_lines_per_minute`.
const STORM_WINDOW_MS: u64 = 60_000;
/// How often a storm's held notifications are summed up in one line.
const STORM_SUMMARY_MS: u64 = 15_000;
/// The most groups a storm summary names.
const STORM_NAMED: usize = 8;

/// A notification held back during a storm.
#[derive(Clone, Debug)]
struct Held {
    note: u64,
    what: &'static str,
    name: String,
    alerts: usize,
}

/// A room's notification lines in the last minute, and what a storm held back.
#[derive(Debug, Default)]
struct Storm {
    recent: VecDeque<u64>,
    held: Vec<Held>,
    since: u64,
}

/// Overrides people set in chat.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Overrides {
    paused: Option<String>,
    /// Rule name to (until, who).
    silenced: BTreeMap<String, (u64, String)>,
}

/// The engine's state and decisions.
#[derive(Debug)]
pub struct Core {
    cfg: Arc<EngineConfig>,
    audit: Audit,
    actions: Records,
    keys: Records,
    seen: Records,
    groups: Records,
    meta: Records,
    next_id: u64,
    next_note: u64,
    overrides: Overrides,
    /// (rule, target) to the last start.
    last_run: HashMap<(String, String), u64>,
    /// Rule to the starts within the last hour.
    hour: HashMap<String, VecDeque<u64>>,
    /// Per (bot, room): notification lines lately, and what a storm held back.
    storms: HashMap<(String, String), Storm>,
}

fn store_err(e: StoreError) -> String {
    e.to_string()
}

impl Core {
    /// Opens the engine's state in `store`; answers what to say about actions a previous run
    /// left unfinished (and which of them to run again, where the rule allows).
    pub fn open(
        cfg: Arc<EngineConfig>,
        store: &Store,
        now_ms: u64,
    ) -> Result<(Self, Vec<Effect>), String> {
        Self::open_with(cfg, store, now_ms, false)
    }

    /// Like [`Core::open`]; with `remote` (actions run by the cluster's workers), an action
    /// found running is handed to the workers again: a worker that finished it answers its
    /// outcome, one that stopped mid-action makes it "outcome unknown", and one that never
    /// got it (the engine stopped before it was published) runs it; the claims make sure it
    /// is never run twice.
    pub fn open_with(
        cfg: Arc<EngineConfig>,
        store: &Store,
        now_ms: u64,
        remote: bool,
    ) -> Result<(Self, Vec<Effect>), String> {
        let mut core = Self {
            cfg,
            audit: Audit::new(store),
            actions: store.records("engine.actions"),
            keys: store.records("engine.keys"),
            seen: store.records("engine.seen"),
            groups: store.records("engine.groups"),
            meta: store.records("engine.meta"),
            next_id: 1,
            next_note: 1,
            overrides: Overrides::default(),
            last_run: HashMap::new(),
            hour: HashMap::new(),
            storms: HashMap::new(),
        };
        if let Some(o) = core.meta.get("overrides").map_err(store_err)? {
            core.overrides = serde_json::from_slice(&o).unwrap_or_default();
        }
        if let Some(n) = core.meta.get("next_note").map_err(store_err)? {
            core.next_note = String::from_utf8_lossy(&n).parse().unwrap_or(1);
        }
        let mut effects = Vec::new();
        for (_, bytes) in core.actions.list().map_err(store_err)? {
            let Ok(mut a) = serde_json::from_slice::<ActionRecord>(&bytes) else {
                continue;
            };
            core.next_id = core.next_id.max(a.id + 1);
            if let Some(at) = a.started_ms {
                core.count_run(&a.rule, &a.target, at, now_ms);
            }
            if a.state == State::Running && remote {
                core.audit(
                    "redispatched",
                    "engine",
                    &a.label(),
                    "found running after a restart; asked of the workers again (their claims keep it from running twice)",
                )?;
                effects.push(Effect::Run(Box::new(a)));
            } else if a.state == State::Running {
                if a.safe_to_repeat {
                    core.audit(
                        "repeated",
                        "engine",
                        &a.label(),
                        "found unfinished after a restart; the rule says it is safe to repeat",
                    )?;
                    effects.push(Effect::Say {
                        bot: a.bot.clone(),
                        room: a.room.clone(),
                        text: format!(
                            "[{}] was unfinished when the engine stopped; running it again (its rule says it is safe to repeat): {}",
                            a.label(),
                            a.plan_line
                        ).into(),
                    });
                    a.started_ms = Some(now_ms);
                    core.put(&a)?;
                    effects.push(Effect::Run(Box::new(a)));
                } else {
                    a.state = State::Unknown;
                    a.finished_ms = Some(now_ms);
                    core.put(&a)?;
                    core.audit(
                        "outcome-unknown",
                        "engine",
                        &a.label(),
                        "started but unfinished when the engine stopped; not run again",
                    )?;
                    effects.push(Effect::Say {
                        bot: a.bot.clone(),
                        room: a.room.clone(),
                        text: format!(
                            "[{}] outcome unknown: it was running when the engine stopped ({}). It is not run again; check by hand.",
                            a.label(),
                            a.plan_line
                        ).into(),
                    });
                }
            }
        }
        Ok((core, effects))
    }

    /// Action `id` was started elsewhere (a worker) and its outcome cannot be known: `why`.
    /// It is not run again.
    pub fn unknown(&mut self, id: u64, why: &str, now_ms: u64) -> Result<Vec<Effect>, String> {
        let Some(mut a) = self.get(id)? else {
            return Ok(Vec::new());
        };
        if a.state.is_final() {
            return Ok(Vec::new());
        }
        a.state = State::Unknown;
        a.finished_ms = Some(now_ms);
        self.put(&a)?;
        self.audit("outcome-unknown", "engine", &a.label(), why)?;
        Ok(vec![Effect::Say {
            bot: a.bot.clone(),
            room: a.room.clone(),
            text: format!(
                "[{}] outcome unknown: {} ({}). It is not run again; check by hand.",
                a.label(),
                printable(why, 200),
                a.plan_line
            )
            .into(),
        }])
    }

    /// The rules in force.
    pub fn config(&self) -> &Arc<EngineConfig> {
        &self.cfg
    }

    /// Replaces the rules (already checked); answers what to say.
    pub fn reload(&mut self, cfg: Arc<EngineConfig>, who: &str) -> Result<String, String> {
        let line = format!(
            "rules reloaded: {} rules, {} routes (were {} and {})",
            cfg.rules.len(),
            cfg.routes.len(),
            self.cfg.rules.len(),
            self.cfg.routes.len()
        );
        self.cfg = cfg;
        self.audit("rules-reloaded", who, "rules", &line)?;
        Ok(line)
    }

    /// Records a reload that was refused (the rules in force stay).
    pub fn reload_refused(&self, who: &str, why: &str) -> Result<(), String> {
        self.audit("reload-refused", who, "rules", why)
    }

    fn audit(&self, step: &str, who: &str, subject: &str, detail: &str) -> Result<(), String> {
        self.audit
            .record(step, who, subject, detail)
            .map_err(store_err)?;
        Ok(())
    }

    fn put(&self, a: &ActionRecord) -> Result<(), String> {
        self.actions
            .put(
                &ActionRecord::store_key(a.id),
                &serde_json::to_vec(a).expect("a record serialises"),
            )
            .map_err(store_err)
    }

    fn get(&self, id: u64) -> Result<Option<ActionRecord>, String> {
        Ok(self
            .actions
            .get(&ActionRecord::store_key(id))
            .map_err(store_err)?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    fn save_overrides(&self) -> Result<(), String> {
        self.meta
            .put(
                "overrides",
                &serde_json::to_vec(&self.overrides).expect("serialises"),
            )
            .map_err(store_err)
    }

    fn count_run(&mut self, rule: &str, target: &str, at: u64, now_ms: u64) {
        let last = self
            .last_run
            .entry((rule.to_owned(), target.to_owned()))
            .or_insert(at);
        *last = (*last).max(at);
        let hour = self.hour.entry(rule.to_owned()).or_default();
        hour.push_back(at);
        hour.retain(|t| now_ms.saturating_sub(*t) < HOUR_MS);
    }

    /// Where notifications about `alert` go.
    fn route(&self, alert: &Alert) -> Option<(String, String)> {
        self.cfg
            .routes
            .iter()
            .find(|r| r.matchers.matches(alert))
            .map(|r| (r.bot.clone(), r.room.clone()))
    }

    /// Takes a notification from Alertmanager (already checked); answers what to do.
    pub fn receive(&mut self, n: &Notification, now_ms: u64) -> Result<Vec<Effect>, String> {
        let mut fresh: Vec<&Alert> = Vec::new();
        for a in &n.alerts {
            let id = a.identity(&n.group_key);
            if self
                .seen
                .create(&id, &now_ms.to_be_bytes())
                .map_err(store_err)?
            {
                fresh.push(a);
            }
        }
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let mut effects = Vec::new();
        let (firing, resolved): (Vec<&Alert>, Vec<&Alert>) =
            fresh.iter().partition(|a| a.status == Status::Firing);
        self.audit(
            "received",
            "alertmanager",
            &n.group_key,
            &format!("{} firing, {} resolved (new)", firing.len(), resolved.len()),
        )?;
        let first = fresh[0];
        let note = match self.groups.get(&n.group_key).map_err(store_err)? {
            Some(b) => serde_json::from_slice::<GroupNote>(&b).ok(),
            None => None,
        };
        let place = note
            .as_ref()
            .map(|g| (g.bot.clone(), g.room.clone()))
            .or_else(|| self.route(first));
        if let Some((bot, room)) = place {
            let thread = note.as_ref().and_then(|g| g.thread.clone());
            let anchor = thread.is_none().then(|| n.group_key.clone());
            let note = match note {
                Some(g) => g.note,
                None => {
                    let g = GroupNote {
                        note: self.next_note,
                        bot: bot.clone(),
                        room: room.clone(),
                        thread: None,
                    };
                    self.next_note += 1;
                    self.meta
                        .put("next_note", self.next_note.to_string().as_bytes())
                        .map_err(store_err)?;
                    self.groups
                        .put(&n.group_key, &serde_json::to_vec(&g).expect("serialises"))
                        .map_err(store_err)?;
                    g.note
                }
            };
            let truncated = n.truncated_alerts as usize;
            for (what, alerts, extra) in
                [("FIRING", &firing, truncated), ("RESOLVED", &resolved, 0)]
            {
                if alerts.is_empty() {
                    continue;
                }
                let text = summary(note, what, alerts, extra as u64);
                let storm = self.storms.entry((bot.clone(), room.clone())).or_default();
                storm
                    .recent
                    .retain(|t| now_ms.saturating_sub(*t) < STORM_WINDOW_MS);
                if storm.recent.len() < self.cfg.storm_lines {
                    storm.recent.push_back(now_ms);
                    effects.push(Effect::Notify {
                        bot: bot.clone(),
                        room: room.clone(),
                        thread: thread.clone(),
                        anchor: anchor.clone(),
                        text,
                    });
                } else {
                    // A storm: this room has had its share of notification lines for the
                    // minute; the rest are summed up in one line every STORM_SUMMARY_MS.
                    let first = storm.held.is_empty();
                    storm.held.push(Held {
                        note,
                        what,
                        name: printable(alerts[0].name(), 100),
                        alerts: alerts.len() + extra,
                    });
                    if first {
                        storm.since = now_ms;
                        self.audit(
                            "storm",
                            "engine",
                            &room,
                            &format!(
                                "more than {} notifications a minute: summing up",
                                self.cfg.storm_lines
                            ),
                        )?;
                    }
                }
            }
        }
        if !resolved.is_empty() {
            effects.extend(self.verify_resolved(&resolved, now_ms)?);
        }
        for a in firing {
            let rules: Vec<Rule> = self
                .cfg
                .rules
                .iter()
                .filter(|r| r.matchers.matches(a))
                .cloned()
                .collect();
            for rule in rules {
                let key = format!("{}\u{1f}{}\u{1f}{}", rule.name, a.fingerprint, a.starts_at);
                let values: BTreeMap<String, String> = a.labels.clone();
                let trigger = Trigger {
                    text: format!("{} on {}", printable(a.name(), 100), describe(a)),
                    fingerprint: a.fingerprint.clone(),
                };
                effects.extend(self.propose(&rule, &key, &values, trigger, None, now_ms)?);
            }
        }
        Ok(effects)
    }

    /// The first message about group `group_key` was given `id` by the chat service: the
    /// group's later lines go to its thread. The first id learnt stays.
    pub fn threaded(&mut self, group_key: &str, id: &str) -> Result<(), String> {
        let Some(b) = self.groups.get(group_key).map_err(store_err)? else {
            return Ok(());
        };
        let Ok(mut g) = serde_json::from_slice::<GroupNote>(&b) else {
            return Ok(());
        };
        if g.thread.is_some() {
            return Ok(());
        }
        g.thread = Some(id.to_owned());
        self.groups
            .put(group_key, &serde_json::to_vec(&g).expect("serialises"))
            .map_err(store_err)
    }

    /// Asks for (or runs) `rule`'s action for `values`; `requested_by` for a manual run.
    fn propose(
        &mut self,
        rule: &Rule,
        key: &str,
        values: &BTreeMap<String, String>,
        trigger: Trigger,
        requested_by: Option<(&Person, &str, &str)>,
        now_ms: u64,
    ) -> Result<Vec<Effect>, String> {
        let Trigger {
            text: trigger,
            fingerprint,
        } = trigger;
        let here = requested_by.map(|(_, bot, room)| (bot.to_owned(), room.to_owned()));
        let requested_by = requested_by.map(|(p, _, _)| p);
        let (bot, room) = match (&rule.room, here.or_else(|| self.route_for(values))) {
            (Some(room), route) => (
                route
                    .map(|(b, _)| b)
                    .or_else(|| self.cfg.bot.clone())
                    .unwrap_or_default(),
                room.clone(),
            ),
            (None, Some(place)) => place,
            (None, None) => {
                self.audit(
                    "failed",
                    "engine",
                    &rule.name,
                    &format!("{trigger}: no route or room to speak in"),
                )?;
                tracing::warn!(rule = %rule.name, "no route or room for the rule's action: nothing done");
                return Ok(Vec::new());
            }
        };
        let say = |text: String| Effect::Say {
            bot: bot.clone(),
            room: room.clone(),
            text: text.into(),
        };
        let who = requested_by.map_or("engine".to_owned(), |p| p.id.clone());
        if let Some(by) = &self.overrides.paused {
            self.audit(
                "skipped",
                &who,
                &rule.name,
                &format!("{trigger}: automation paused by {by}"),
            )?;
            return Ok(vec![say(format!(
                "rule {}: not acting on {trigger}: automation is paused (by {by}; !automation resume)",
                rule.name
            ))]);
        }
        if let Some((until, by)) = self.overrides.silenced.get(&rule.name)
            && *until > now_ms
        {
            self.audit(
                "skipped",
                &who,
                &rule.name,
                &format!("{trigger}: silenced by {by}"),
            )?;
            return Ok(Vec::new());
        }
        let plan = match rule.action.plan_with(|l| values.get(l).map(String::as_str)) {
            Ok(p) => p,
            Err(missing) => {
                self.audit("failed", &who, &rule.name, &format!("{trigger}: {missing}"))?;
                return Ok(vec![say(format!(
                    "rule {}: cannot act on {trigger}: {missing}",
                    rule.name
                ))]);
            }
        };
        let target = match &rule.target {
            Some(t) => match t.render_with(|l| values.get(l).map(String::as_str)) {
                Ok(t) => t,
                Err(missing) => {
                    self.audit(
                        "failed",
                        &who,
                        &rule.name,
                        &format!("{trigger}: target: {missing}"),
                    )?;
                    return Ok(vec![say(format!(
                        "rule {}: cannot act on {trigger}: {missing}",
                        rule.name
                    ))]);
                }
            },
            None => rule.name.clone(),
        };
        if !rule.cooldown.is_zero()
            && let Some(last) = self.last_run.get(&(rule.name.clone(), target.clone()))
            && now_ms.saturating_sub(*last) < rule.cooldown.as_millis() as u64
        {
            let left = Duration::from_millis(rule.cooldown.as_millis() as u64 - (now_ms - last));
            self.audit(
                "skipped",
                &who,
                &rule.name,
                &format!("{trigger}: {target} is cooling down"),
            )?;
            return Ok(vec![say(format!(
                "rule {}: not acting on {trigger}: {target} ran less than {} ago ({} left)",
                rule.name,
                humantime::format_duration(rule.cooldown),
                humantime::format_duration(Duration::from_secs(left.as_secs().max(1)))
            ))]);
        }
        if let Some(cap) = rule.max_per_hour {
            let ran = self.hour.get(&rule.name).map_or(0, |h| {
                h.iter()
                    .filter(|t| now_ms.saturating_sub(**t) < HOUR_MS)
                    .count()
            });
            if ran >= cap as usize {
                self.audit(
                    "skipped",
                    &who,
                    &rule.name,
                    &format!("{trigger}: {ran} runs in the last hour (cap {cap})"),
                )?;
                return Ok(vec![say(format!(
                    "rule {}: not acting on {trigger}: it ran {ran} times in the last hour (cap {cap})",
                    rule.name
                ))]);
            }
        }
        let id = self.next_id;
        if !self
            .keys
            .create(key, id.to_string().as_bytes())
            .map_err(store_err)?
        {
            // This very action was created before: a duplicate delivery.
            return Ok(Vec::new());
        }
        self.next_id += 1;
        let mut a = ActionRecord {
            id,
            key: key.to_owned(),
            rule: rule.name.clone(),
            plan_line: plan.describe(),
            plan,
            target,
            trigger: trigger.clone(),
            bot: bot.clone(),
            room: room.clone(),
            requested_by: requested_by.map(|p| p.id.clone()),
            approvers: rule.approvers.clone(),
            needed: rule.approval.needed(),
            approved_by: Vec::new(),
            state: State::Awaiting,
            safe_to_repeat: rule.safe_to_repeat,
            created_ms: now_ms,
            expires_ms: now_ms + self.cfg.approval_timeout.as_millis() as u64,
            started_ms: None,
            finished_ms: None,
            outcome: None,
            note: None,
            fingerprint,
            verify_secs: rule.verify.map_or(0, |d| d.as_secs().max(1)),
            verify_by_ms: None,
            verified: None,
        };
        self.audit(
            "planned",
            &who,
            &a.label(),
            &format!("rule {}: {} ({trigger})", rule.name, a.plan_line),
        )?;
        if rule.dry_run {
            a.state = State::DryRun;
            a.finished_ms = Some(now_ms);
            self.put(&a)?;
            self.audit("dry-run", "engine", &a.label(), &a.plan_line)?;
            return Ok(vec![say(format!(
                "[{}] dry run of rule {}: would {} (for {trigger}); nothing was done",
                a.label(),
                rule.name,
                a.plan_line
            ))]);
        }
        if rule.approval == Approval::None {
            return self.start(a, now_ms, None);
        }
        self.put(&a)?;
        let list = a.approvers.clone().unwrap_or_default();
        let people = self.cfg.approvers.get(&list).map_or(0, Vec::len);
        self.audit(
            "approval-asked",
            "engine",
            &a.label(),
            &format!("{} of list {list}", a.needed),
        )?;
        let label = a.label();
        let text = Line::new()
            .bold(format!("[{label}]"))
            .text(" rule ")
            .code(rule.name.as_str())
            .text(" wants to ")
            .code(a.plan_line.as_str())
            .text(format!(
                " (for {trigger}). {} from {list} ({people} {}): ",
                if a.needed == 2 {
                    "Two approvals needed"
                } else {
                    "Approval needed"
                },
                if people == 1 { "person" } else { "people" },
            ))
            .code(format!("!approve {label}"))
            .text(" or ")
            .code(format!("!deny {label} [reason]"))
            .text(format!(
                "; expires in {}.",
                humantime::format_duration(self.cfg.approval_timeout)
            ));
        let expires = humantime::format_duration(self.cfg.approval_timeout).to_string();
        let card = Card::new(format!("[{label}] {}", a.plan_line))
            .text(format!("for {trigger}"))
            .facts([
                ("rule", rule.name.clone()),
                (
                    "approvals",
                    format!(
                        "{} from {list} ({people} {})",
                        a.needed,
                        if people == 1 { "person" } else { "people" }
                    ),
                ),
                ("expires", format!("in {expires}")),
            ])
            .input("reason", "Reason", "why, for a denial")
            .button("Approve", format!("approve {label}"))
            .button("Deny", format!("deny {label}"))
            .fallback_text(text.clone());
        Ok(vec![Effect::Ask {
            bot,
            room,
            text: text.into(),
            card: Box::new(card),
        }])
    }

    fn route_for(&self, values: &BTreeMap<String, String>) -> Option<(String, String)> {
        let probe = Alert::from_labels(values.clone());
        self.route(&probe)
    }

    /// Marks `a` running (in the store, before anything is done) and asks the driver to run it.
    /// `approved_by` is the person whose approval let it start.
    fn start(
        &mut self,
        mut a: ActionRecord,
        now_ms: u64,
        approved_by: Option<&str>,
    ) -> Result<Vec<Effect>, String> {
        a.state = State::Running;
        a.started_ms = Some(now_ms);
        self.put(&a)?;
        self.count_run(&a.rule.clone(), &a.target.clone(), now_ms, now_ms);
        self.audit("started", "engine", &a.label(), &a.plan_line)?;
        let say = Effect::Say {
            bot: a.bot.clone(),
            room: a.room.clone(),
            text: format!(
                "[{}] {}running rule {}: {} (for {})",
                a.label(),
                approved_by.map_or(String::new(), |by| format!("approved by {by}; ")),
                a.rule,
                a.plan_line,
                a.trigger
            )
            .into(),
        };
        Ok(vec![say, Effect::Run(Box::new(a))])
    }

    /// Records what running action `id` came to; answers what to say.
    pub fn finished(
        &mut self,
        id: u64,
        outcome: Outcome,
        now_ms: u64,
    ) -> Result<Vec<Effect>, String> {
        let Some(mut a) = self.get(id)? else {
            return Ok(Vec::new());
        };
        if a.state.is_final() {
            // Told twice (a worker's result delivered again): said once already.
            return Ok(Vec::new());
        }
        a.state = if outcome.ok {
            State::Succeeded
        } else {
            State::Failed
        };
        a.finished_ms = Some(now_ms);
        let step = if outcome.ok { "finished" } else { "failed" };
        self.audit(step, "engine", &a.label(), &outcome.summary)?;
        let mut text = format!(
            "[{}] {}: {} ({})",
            a.label(),
            if outcome.ok { "done" } else { "FAILED" },
            a.plan_line,
            outcome.summary
        );
        let out = outcome.output.trim();
        if !out.is_empty() {
            let first: String = out.lines().take(3).collect::<Vec<_>>().join(" | ");
            text.push_str(&format!(
                ": {}",
                // What a program or a remote server wrote: its words only, on this line.
                printable(&first, 300)
            ));
        }
        if a.state == State::Succeeded && a.verify_secs > 0 && !a.fingerprint.is_empty() {
            a.verify_by_ms = Some(now_ms + a.verify_secs * 1000);
            text.push_str(&format!(
                "; waiting up to {} for the alert to resolve",
                humantime::format_duration(Duration::from_secs(a.verify_secs))
            ));
        }
        a.outcome = Some(outcome);
        self.put(&a)?;
        Ok(vec![Effect::Say {
            bot: a.bot.clone(),
            room: a.room.clone(),
            text: text.into(),
        }])
    }

    /// The approver list entry `who` matches for action `a`, if any.
    fn entry_of(&self, a: &ActionRecord, who: &Person) -> Option<String> {
        if !who.verified {
            return None;
        }
        let list = self.cfg.approvers.get(a.approvers.as_deref()?)?;
        list.iter()
            .find(|e| who.identity.matches(e, &who.id))
            .cloned()
    }

    /// `who` approves action `id`; answers the reply to them and what else to do.
    pub fn approve(
        &mut self,
        id: u64,
        who: &Person,
        now_ms: u64,
    ) -> Result<(String, Vec<Effect>), String> {
        let Some(mut a) = self.get(id)? else {
            return Ok((format!("there is no action A{id}"), Vec::new()));
        };
        if a.state != State::Awaiting {
            return Ok((
                format!("[{}] is {}: nothing to approve", a.label(), a.state.name()),
                Vec::new(),
            ));
        }
        if now_ms >= a.expires_ms {
            return Ok((self.expire(&mut a, now_ms)?, Vec::new()));
        }
        let Some(entry) = self.entry_of(&a, who) else {
            self.audit(
                "approval-refused",
                &who.id,
                &a.label(),
                "not on the approver list",
            )?;
            return Ok((
                format!(
                    "[{}] you are not on the approver list `{}`",
                    a.label(),
                    a.approvers.as_deref().unwrap_or("")
                ),
                Vec::new(),
            ));
        };
        if let Some(req) = &a.requested_by
            && (who.identity.matches(&entry, req) || req.eq_ignore_ascii_case(&who.id))
        {
            self.audit(
                "approval-refused",
                &who.id,
                &a.label(),
                "the requester may not approve their own request",
            )?;
            return Ok((
                format!(
                    "[{}] you asked for it: someone else must approve",
                    a.label()
                ),
                Vec::new(),
            ));
        }
        if a.approved_by.contains(&entry) {
            self.audit(
                "approval-refused",
                &who.id,
                &a.label(),
                "a second approval by the same person",
            )?;
            return Ok((
                format!(
                    "[{}] you approved it already: it needs another person",
                    a.label()
                ),
                Vec::new(),
            ));
        }
        a.approved_by.push(entry);
        self.audit(
            "approved",
            &who.id,
            &a.label(),
            &format!("{} of {}", a.approved_by.len(), a.needed),
        )?;
        if a.approved_by.len() < a.needed {
            self.put(&a)?;
            return Ok((
                format!("[{}] approved by you; one more approval needed", a.label()),
                Vec::new(),
            ));
        }
        // The line that says it runs says who approved it: one line, in the order it happened.
        Ok((String::new(), self.start(a, now_ms, Some(&who.id))?))
    }

    /// `who` denies action `id`.
    pub fn deny(
        &mut self,
        id: u64,
        who: &Person,
        reason: &str,
        now_ms: u64,
    ) -> Result<String, String> {
        let Some(mut a) = self.get(id)? else {
            return Ok(format!("there is no action A{id}"));
        };
        if a.state != State::Awaiting {
            return Ok(format!(
                "[{}] is {}: nothing to deny",
                a.label(),
                a.state.name()
            ));
        }
        if now_ms >= a.expires_ms {
            return self.expire(&mut a, now_ms);
        }
        if self.entry_of(&a, who).is_none() {
            self.audit(
                "denial-refused",
                &who.id,
                &a.label(),
                "not on the approver list",
            )?;
            return Ok(format!(
                "[{}] you are not on the approver list `{}`",
                a.label(),
                a.approvers.as_deref().unwrap_or("")
            ));
        }
        a.state = State::Denied;
        a.finished_ms = Some(now_ms);
        let reason = if reason.trim().is_empty() {
            "no reason given"
        } else {
            reason.trim()
        };
        a.note = Some(format!("denied by {}: {reason}", who.id));
        self.put(&a)?;
        self.audit("denied", &who.id, &a.label(), reason)?;
        Ok(format!(
            "[{}] denied: {} will not run ({reason})",
            a.label(),
            a.plan_line
        ))
    }

    fn expire(&mut self, a: &mut ActionRecord, now_ms: u64) -> Result<String, String> {
        a.state = State::Expired;
        a.finished_ms = Some(now_ms);
        self.put(a)?;
        self.audit("expired", "engine", &a.label(), "no decision in time")?;
        Ok(format!(
            "[{}] expired: nobody decided in time; {} was not done",
            a.label(),
            a.plan_line
        ))
    }

    /// Expires approval requests whose time is up.
    pub fn tick(&mut self, now_ms: u64) -> Result<Vec<Effect>, String> {
        let mut effects = Vec::new();
        for (_, bytes) in self.actions.list().map_err(store_err)? {
            let Ok(mut a) = serde_json::from_slice::<ActionRecord>(&bytes) else {
                continue;
            };
            if a.verified.is_none() && a.verify_by_ms.is_some_and(|by| now_ms >= by) {
                a.verified = Some(false);
                self.put(&a)?;
                self.audit(
                    "not-verified",
                    "engine",
                    &a.label(),
                    "the alert still fired",
                )?;
                effects.push(Effect::Say {
                    bot: a.bot.clone(),
                    room: a.room.clone(),
                    text: format!(
                        "[{}] not verified: {} still fires {} after the action",
                        a.label(),
                        a.trigger,
                        humantime::format_duration(Duration::from_secs(a.verify_secs))
                    )
                    .into(),
                });
                continue;
            }
            if a.state == State::Awaiting && now_ms >= a.expires_ms {
                let text = self.expire(&mut a, now_ms)?;
                effects.push(Effect::Say {
                    bot: a.bot.clone(),
                    room: a.room.clone(),
                    text: text.into(),
                });
            }
        }
        for ((bot, room), storm) in &mut self.storms {
            if storm.held.is_empty() || now_ms.saturating_sub(storm.since) < STORM_SUMMARY_MS {
                continue;
            }
            let held = std::mem::take(&mut storm.held);
            let alerts: usize = held.iter().map(|h| h.alerts).sum();
            let mut groups: Vec<String> = Vec::new();
            for h in &held {
                let g = format!("G{} {} {}", h.note, h.name, h.what.to_lowercase());
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
            let named = groups.len().min(STORM_NAMED);
            let mut text = format!(
                "[storm] {} more notifications ({alerts} alerts) in the last {}: {}",
                held.len(),
                humantime::format_duration(Duration::from_secs(
                    now_ms.saturating_sub(storm.since).div_ceil(1000)
                )),
                groups[..named].join(", ")
            );
            if groups.len() > named {
                text.push_str(&format!(" and {} more groups", groups.len() - named));
            }
            storm.recent.push_back(now_ms);
            effects.push(Effect::Say {
                bot: bot.clone(),
                room: room.clone(),
                text: text.into(),
            });
        }
        let horizon = now_ms.saturating_sub(SEEN_FOR_MS);
        for (k, v) in self.seen.list().map_err(store_err)? {
            let at = v.try_into().map(u64::from_be_bytes).unwrap_or(0);
            if at < horizon {
                self.seen.remove(&k).map_err(store_err)?;
            }
        }
        Ok(effects)
    }

    /// Runs `rule` by hand for `values`, through its approvals, asked for by `who` in `room`
    /// of `bot` (where the request and its outcome are said, unless the rule names a room);
    /// `request` makes the key unique.
    #[allow(clippy::too_many_arguments)]
    pub fn run_manual(
        &mut self,
        rule: &str,
        values: BTreeMap<String, String>,
        who: &Person,
        bot: &str,
        room: &str,
        request: &str,
        now_ms: u64,
    ) -> Result<(Option<String>, Vec<Effect>), String> {
        let Some(rule) = self.cfg.rules.iter().find(|r| r.name == rule).cloned() else {
            let names: Vec<&str> = self.cfg.rules.iter().map(|r| r.name.as_str()).collect();
            return Ok((
                Some(format!("no rule `{rule}` (rules: {})", names.join(", "))),
                Vec::new(),
            ));
        };
        // A request by hand is held to the rule's matchers like an alert: what an equality
        // pins is filled in when not given, and everything else must match, so `!run` cannot
        // reach a target the rule was written to leave alone.
        let mut values = values;
        for (name, value) in rule.matchers.0.iter().filter_map(|m| m.pinned()) {
            values
                .entry(name.to_owned())
                .or_insert_with(|| value.to_owned());
        }
        let probe = Alert::from_labels(values.clone());
        let failing: Vec<String> = rule
            .matchers
            .0
            .iter()
            .filter(|m| !m.matches(&probe))
            .map(ToString::to_string)
            .collect();
        if !failing.is_empty() {
            self.audit(
                "refused",
                &who.id,
                &rule.name,
                &format!("a request by hand outside the rule: {}", failing.join(", ")),
            )?;
            return Ok((
                Some(format!(
                    "rule {} does not take these values: {}",
                    rule.name,
                    failing.join(", ")
                )),
                Vec::new(),
            ));
        }
        let key = format!("{}\u{1f}manual\u{1f}{request}", rule.name);
        let trigger = Trigger {
            text: format!("a request by {}", who.id),
            fingerprint: String::new(),
        };
        let effects = self.propose(
            &rule,
            &key,
            &values,
            trigger,
            Some((who, bot, room)),
            now_ms,
        )?;
        Ok((None, effects))
    }

    /// Actions waiting for one of `resolved` to resolve: verified.
    fn verify_resolved(&mut self, resolved: &[&Alert], now_ms: u64) -> Result<Vec<Effect>, String> {
        let mut effects = Vec::new();
        for (_, bytes) in self.actions.list().map_err(store_err)? {
            let Ok(mut a) = serde_json::from_slice::<ActionRecord>(&bytes) else {
                continue;
            };
            if a.verified.is_some()
                || a.verify_by_ms.is_none()
                || !resolved.iter().any(|r| r.fingerprint == a.fingerprint)
            {
                continue;
            }
            a.verified = Some(true);
            self.put(&a)?;
            let after =
                Duration::from_secs(now_ms.saturating_sub(a.finished_ms.unwrap_or(now_ms)) / 1000);
            self.audit("verified", "engine", &a.label(), "the alert resolved")?;
            effects.push(Effect::Say {
                bot: a.bot.clone(),
                room: a.room.clone(),
                text: format!(
                    "[{}] verified: the alert resolved {} after the action",
                    a.label(),
                    humantime::format_duration(after)
                )
                .into(),
            });
        }
        Ok(effects)
    }

    /// Pauses or resumes every rule's actions.
    pub fn set_paused(&mut self, paused: bool, who: &str) -> Result<String, String> {
        self.overrides.paused = paused.then(|| who.to_owned());
        self.save_overrides()?;
        self.audit(
            "overridden",
            who,
            "automation",
            if paused { "paused" } else { "resumed" },
        )?;
        Ok(if paused {
            "automation paused: rules notify but do not act (!automation resume)".to_owned()
        } else {
            "automation resumed".to_owned()
        })
    }

    /// Silences `rule` for `how_long`.
    pub fn silence(
        &mut self,
        rule: &str,
        how_long: Duration,
        who: &str,
        now_ms: u64,
    ) -> Result<String, String> {
        if !self.cfg.rules.iter().any(|r| r.name == rule) {
            return Ok(format!("no rule `{rule}`"));
        }
        let until = now_ms + how_long.as_millis() as u64;
        self.overrides
            .silenced
            .insert(rule.to_owned(), (until, who.to_owned()));
        self.save_overrides()?;
        self.audit(
            "overridden",
            who,
            rule,
            &format!("silenced for {}", humantime::format_duration(how_long)),
        )?;
        Ok(format!(
            "rule {rule} silenced for {}",
            humantime::format_duration(how_long)
        ))
    }

    /// Pending, running and recent actions, newest first, one line each.
    pub fn summary_lines(&self, limit: usize) -> Result<Vec<String>, String> {
        let mut all: Vec<ActionRecord> = self
            .actions
            .list()
            .map_err(store_err)?
            .into_iter()
            .filter_map(|(_, b)| serde_json::from_slice(&b).ok())
            .collect();
        all.sort_by_key(|a| std::cmp::Reverse(a.id));
        let mut lines: Vec<String> = all
            .iter()
            .take(limit)
            .map(|a| {
                let extra = match (&a.outcome, &a.note) {
                    (Some(o), _) => format!(" ({})", o.summary),
                    (None, Some(n)) => format!(" ({n})"),
                    _ if a.state == State::Awaiting => {
                        format!(" ({} of {} approvals)", a.approved_by.len(), a.needed)
                    }
                    _ => String::new(),
                };
                format!(
                    "[{}] {}: {} — {}{extra}",
                    a.label(),
                    a.state.name(),
                    a.rule,
                    a.plan_line
                )
            })
            .collect();
        if let Some(by) = &self.overrides.paused {
            lines.insert(0, format!("automation is paused (by {by})"));
        }
        Ok(lines)
    }

    /// The plan of action `id`, for tests and the API.
    pub fn action(&self, id: u64) -> Result<Option<ActionRecord>, String> {
        self.get(id)
    }

    /// The audit trail.
    pub fn audit_trail(&self) -> &Audit {
        &self.audit
    }
}

/// An alert in a few words: its instance (or job, or service) and summary.
fn describe(a: &Alert) -> String {
    let place = ["instance", "service", "job", "pod", "namespace"]
        .iter()
        .find_map(|k| a.labels.get(*k))
        .map_or("", String::as_str);
    let summary = a.annotations.get("summary").map_or("", String::as_str);
    let text = match (place.is_empty(), summary.is_empty()) {
        (false, false) => format!("{place}: {summary}"),
        (false, true) => place.to_owned(),
        (true, false) => summary.to_owned(),
        (true, true) => a.fingerprint.clone(),
    };
    printable(&text, 200)
}

/// At most `max` characters of `s`, control characters left out: an alert's words never
/// start a line of their own in chat (where they could pass for the bot's).
fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// One line about a group's alerts.
fn summary(note: u64, what: &str, alerts: &[&Alert], truncated: u64) -> Rich {
    let mut names: Vec<String> = alerts.iter().map(|a| printable(a.name(), 100)).collect();
    names.dedup();
    let mut text = format!(
        " {}{}: ",
        if alerts.len() > 1 {
            format!("{} × ", alerts.len())
        } else {
            String::new()
        },
        names.first().map_or("alert", String::as_str)
    );
    let shown: Vec<String> = alerts.iter().take(NAMED).map(|a| describe(a)).collect();
    text.push_str(&shown.join("; "));
    let more = (alerts.len() - shown.len()) as u64 + truncated;
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    Line::new()
        .bold(format!("[G{note}] {what}"))
        .text(text)
        .into()
}
