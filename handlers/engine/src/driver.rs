//! The engine at work: one thread of its own owns the [`Core`] and carries out what it
//! decides (says through the bots' voices, runs actions), so the HTTP server and the bots only
//! ever send it requests and wait for the answer. A webhook is answered 2xx only once what it
//! brought is in the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opsbot::bot::{NotWritten, Voice};
use opsbot::card::Card;
use opsbot::message::Destination;
use opsbot::prelude::Handler as _;
use opsbot::rich::Rich;
use opsbot::store::Store;
use tokio::sync::{mpsc, oneshot};

use crate::action::{self, Outcome};
use crate::alert::{Bounds, Notification};
use crate::audit::Audit;
use crate::commands::EngineCommands;
use crate::config::EngineConfig;
use crate::core::{Core, Effect, Person};
use crate::signature::Verifier;

/// How many requests may wait for the engine's thread.
const QUEUE: usize = 1024;
/// How long a caller waits for the engine's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

/// What the engine's thread is asked.
enum Request {
    Alerts(Box<Notification>, Reply<usize>),
    Approve(u64, Person, Reply<String>),
    Deny(u64, Person, String, Reply<String>),
    Run {
        rule: String,
        values: BTreeMap<String, String>,
        who: Person,
        bot: String,
        room: String,
        reply: Reply<String>,
    },
    Pause(bool, String, Reply<String>),
    Silence(String, Duration, String, Reply<String>),
    Actions(Reply<Vec<String>>),
    Reload(String, Reply<String>),
    Finished(u64, Outcome),
    /// A worker's result.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Worked(crate::cluster::WorkResult),
    /// A group's first line, said by a bot, was written (with the id the service gave it) or
    /// not.
    Threaded {
        group: String,
        bot: String,
        written: Result<Option<Arc<str>>, NotWritten>,
    },
}

/// Re-reads and checks the engine's rules (the whole config file, as `opsbot check` would).
pub type Reloader = Box<dyn Fn() -> Result<EngineConfig, String> + Send>;

/// What the engine works with, from the process that runs it.
pub struct Wiring {
    /// Where it keeps its state (the process's state store).
    pub store: Store,
    /// The bots' voices, by bot name.
    pub voices: HashMap<String, Voice>,
    /// Heals a bot's subsystem (the `heal` action).
    pub heal: Arc<action::Healer>,
    /// Re-reads the rules at SIGHUP and `!rules reload`.
    pub reload: Reloader,
    /// Where actions run: here (`None`), or by workers on NATS JetStream.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// The engine's lead, when several processes run it (`[cluster] active_standby`): alerts
    /// are then forwarded through NATS to whichever holds it, and only that one decides.
    pub lead: Option<opsbot::lead::Lead>,
}

impl std::fmt::Debug for Wiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring")
            .field("voices", &self.voices.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The bots the engine speaks through and heals.
struct World {
    voices: HashMap<String, Voice>,
    heal: Arc<action::Healer>,
    /// Actions for the cluster's workers, when there is a cluster.
    remote: Option<mpsc::Sender<(Box<crate::record::ActionRecord>, tokio::time::Instant)>>,
}

/// How many actions may wait for the cluster (NATS unreachable) before more are refused.
const REMOTE_QUEUE: usize = 1000;

/// What the HTTP side reads without asking the engine's thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Mutex<Arc<EngineConfig>>,
    pub(crate) bounds: Bounds,
    pub(crate) verifier: Verifier,
    pub(crate) audit: Mutex<Option<Audit>>,
    /// Where alerts go instead of this process's core, when several processes run the engine.
    intake: Mutex<Option<mpsc::Sender<Forward>>>,
}

/// A notification to forward to the engine that holds the lead, and where to answer.
type Forward = (Box<Notification>, Reply<usize>);

/// A handle on the engine. Cheap to clone; made before the bots are built (their `engine`
/// handlers hold one) and started once they are.
#[derive(Clone, Debug)]
pub struct Engine {
    tx: mpsc::Sender<Request>,
    rx: Arc<Mutex<Option<mpsc::Receiver<Request>>>>,
    pub(crate) shared: Arc<Shared>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// A handle on an engine not started yet: requests wait until it is.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: Arc::new(Mutex::new(Some(rx))),
            shared: Arc::new(Shared {
                config: Mutex::new(Arc::new(EngineConfig::empty())),
                bounds: Bounds::default(),
                verifier: Verifier::new(300, 100_000),
                audit: Mutex::new(None),
                intake: Mutex::new(None),
            }),
        }
    }

    /// Starts the engine's thread with `config` and what it works with (see [`Wiring`]).
    /// Answers the thread, which ends when every handle is gone.
    ///
    /// # Panics
    /// When started twice.
    pub fn start(
        &self,
        config: EngineConfig,
        wiring: Wiring,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let Wiring {
            store,
            voices,
            heal,
            reload,
            cluster,
            lead,
        } = wiring;
        let rx = self
            .rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("the engine is started once");
        let config = Arc::new(config);
        *self.shared.config.lock().unwrap_or_else(|p| p.into_inner()) = config.clone();
        *self.shared.audit.lock().unwrap_or_else(|p| p.into_inner()) = Some(Audit::new(&store));
        let (core, effects) = Core::open_with(config, &store, now_ms(), cluster.is_some())
            .map_err(std::io::Error::other)?;
        let tx = self.tx.clone();
        let shared = self.shared.clone();
        let (remote, queue) = match &cluster {
            Some(_) => {
                let (q_tx, q_rx) = mpsc::channel(REMOTE_QUEUE);
                (Some(q_tx), Some(q_rx))
            }
            None => (None, None),
        };
        let world = World {
            voices,
            heal,
            remote,
        };
        let standby = match (&cluster, lead) {
            (Some(c), Some(lead)) if c.active_standby => {
                let (i_tx, i_rx) = mpsc::channel(QUEUE);
                *self.shared.intake.lock().unwrap_or_else(|p| p.into_inner()) = Some(i_tx);
                Some((c.clone(), lead, i_rx))
            }
            _ => None,
        };
        let bounds = self.shared.bounds;
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the engine");
                rt.block_on(async move {
                    let results_here = standby.is_none();
                    if let Some((cfg, lead, intake)) = standby {
                        tokio::spawn(forward(cfg.clone(), intake));
                        tokio::spawn(lead_work(cfg, lead, bounds, tx.clone()));
                    }
                    if let (Some(cfg), Some(queue)) = (cluster, queue) {
                        tokio::spawn(dispatch(cfg, queue, tx.clone(), results_here));
                    }
                    run(core, effects, rx, tx, world, reload, shared).await;
                });
            })
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send(make(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => "the engine is busy; try again".to_owned(),
            mpsc::error::TrySendError::Closed(_) => "the engine is not running".to_owned(),
        })?;
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the engine stopped before answering".into()),
            Err(_) => Err("the engine did not answer in time".into()),
        }
    }

    /// Hands over an Alertmanager notification; answers how many of its alerts were new (or,
    /// when several processes run the engine, how many were forwarded to the one that
    /// decides, once NATS has them).
    pub async fn alerts(&self, n: Notification) -> Result<usize, String> {
        let intake = self
            .shared
            .intake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(intake) = intake {
            let (reply, answer) = oneshot::channel();
            intake
                .try_send((Box::new(n), reply))
                .map_err(|_| "the engine is busy; try again".to_owned())?;
            return match tokio::time::timeout(ANSWER_WITHIN, answer).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err("the engine stopped before answering".into()),
                Err(_) => Err("NATS did not take the alerts in time".into()),
            };
        }
        self.ask(|r| Request::Alerts(Box::new(n), r)).await
    }

    /// `who` approves action `id`.
    pub async fn approve(&self, id: u64, who: Person) -> Result<String, String> {
        self.ask(|r| Request::Approve(id, who, r)).await
    }

    /// `who` denies action `id`.
    pub async fn deny(&self, id: u64, who: Person, reason: String) -> Result<String, String> {
        self.ask(|r| Request::Deny(id, who, reason, r)).await
    }

    /// `who` asks, in `room` of `bot`, for `rule` to run for `values`.
    pub async fn run_rule(
        &self,
        rule: String,
        values: BTreeMap<String, String>,
        who: Person,
        bot: String,
        room: String,
    ) -> Result<String, String> {
        self.ask(|reply| Request::Run {
            rule,
            values,
            who,
            bot,
            room,
            reply,
        })
        .await
    }

    /// Pauses or resumes automation.
    pub async fn pause(&self, paused: bool, who: String) -> Result<String, String> {
        self.ask(|r| Request::Pause(paused, who, r)).await
    }

    /// Silences a rule.
    pub async fn silence(&self, rule: String, d: Duration, who: String) -> Result<String, String> {
        self.ask(|r| Request::Silence(rule, d, who, r)).await
    }

    /// Pending, running and recent actions.
    pub async fn actions(&self) -> Result<Vec<String>, String> {
        self.ask(Request::Actions).await
    }

    /// Re-reads the rules.
    pub async fn reload(&self, who: String) -> Result<String, String> {
        self.ask(|r| Request::Reload(who, r)).await
    }

    /// The rules in force.
    pub fn config(&self) -> Arc<EngineConfig> {
        self.shared
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A line for a bot to say.
#[derive(Debug)]
struct Line {
    bot: String,
    dest: Destination,
    text: Rich,
    /// The alert group whose thread this line would start (see [`Effect::Notify`]).
    anchor: Option<String>,
    /// The line as a card, where the bot's transport has cards (see [`Effect::Ask`]).
    card: Option<Box<Card>>,
}

/// Lines the engine could not say yet (their bot was not running: the process is starting),
/// said again each second, oldest first; the oldest go when there are too many.
#[derive(Debug, Default)]
struct Unsaid(std::collections::VecDeque<Line>);

/// The most lines kept waiting for their bot.
const UNSAID: usize = 1000;

impl Unsaid {
    fn say(&mut self, voices: &HashMap<String, Voice>, line: Line, tx: &mpsc::Sender<Request>) {
        let Some(v) = voices.get(&line.bot) else {
            tracing::warn!(bot = %line.bot, dest = %line.dest, text = %line.text.plain(), "the engine names a bot this process does not run");
            return;
        };
        let said = match (&line.anchor, &line.card) {
            (_, Some(card)) => {
                match v.post_card(line.dest.clone(), (**card).clone(), EngineCommands::NAME) {
                    Ok(posted) => posted.is_some(),
                    Err(e) => {
                        // Text from an alert made the card too big: the text says the same.
                        tracing::warn!(error = %e, "an approval card could not be made; sent as text");
                        v.say_rich(line.dest.clone(), line.text.clone())
                    }
                }
            }
            (None, None) => v.say_rich(line.dest.clone(), line.text.clone()),
            (Some(group), None) => match v.post_rich(line.dest.clone(), line.text.clone()) {
                None => false,
                Some(posted) => {
                    // The id comes once the line is written; later lines go to its thread.
                    let (group, bot, tx) = (group.clone(), line.bot.clone(), tx.clone());
                    tokio::spawn(async move {
                        let written = posted.written().await;
                        let _ = tx
                            .send(Request::Threaded {
                                group,
                                bot,
                                written,
                            })
                            .await;
                    });
                    true
                }
            },
        };
        if said {
            return;
        }
        if self.0.len() >= UNSAID
            && let Some(old) = self.0.pop_front()
        {
            tracing::warn!(bot = %old.bot, dest = %old.dest, text = %old.text.plain(), "a line the engine could not say was dropped");
        }
        self.0.push_back(line);
    }

    fn retry(&mut self, voices: &HashMap<String, Voice>, tx: &mpsc::Sender<Request>) {
        for line in std::mem::take(&mut self.0) {
            self.say(voices, line, tx);
        }
    }
}

/// How long lines about a group wait for the id of its first message before they go to the
/// room without it.
const THREAD_WAIT: Duration = Duration::from_secs(60);
/// The most lines about one group that wait for that id.
const THREAD_WAITING: usize = 100;

/// Alert groups' threads being started: a group's later lines wait until its first line is
/// written and the service has named it, so an update that comes right after the first still
/// lands in its thread.
#[derive(Debug, Default)]
struct Threads {
    /// Group to (since when, the lines waiting).
    waiting: HashMap<String, (tokio::time::Instant, Vec<Line>)>,
    /// Bots whose transport gives no message ids (no threads): their lines need not wait.
    plain: HashSet<String>,
}

impl Threads {
    /// Says a notification line: at once, or after its group's first line has an id.
    fn notify(
        &mut self,
        mut line: Line,
        voices: &HashMap<String, Voice>,
        unsaid: &mut Unsaid,
        tx: &mpsc::Sender<Request>,
    ) {
        if self.plain.contains(&line.bot) {
            line.anchor = None;
        }
        let Some(group) = line.anchor.clone() else {
            return unsaid.say(voices, line, tx);
        };
        match self.waiting.get_mut(&group) {
            Some((_, lines)) if lines.len() < THREAD_WAITING => lines.push(line),
            Some(_) => {
                line.anchor = None;
                unsaid.say(voices, line, tx);
            }
            None => {
                self.waiting
                    .insert(group, (tokio::time::Instant::now(), Vec::new()));
                unsaid.say(voices, line, tx);
            }
        }
    }

    /// `group`'s first line, said by `bot`, was written as `id` (or not): the lines waiting
    /// for it go out, in its thread where there is one.
    fn started(
        &mut self,
        group: &str,
        bot: &str,
        written: Result<Option<Arc<str>>, NotWritten>,
        voices: &HashMap<String, Voice>,
        unsaid: &mut Unsaid,
        tx: &mpsc::Sender<Request>,
    ) {
        if let Ok(None) = written {
            self.plain.insert(bot.to_owned());
        }
        let Some((_, lines)) = self.waiting.remove(group) else {
            return;
        };
        for mut line in lines {
            line.anchor = None;
            if let (Ok(Some(id)), Destination::Room(room)) = (&written, &line.dest) {
                line.dest = Destination::thread(room.clone(), id.clone());
            }
            unsaid.say(voices, line, tx);
        }
    }

    /// Lines that waited too long for their group's first message go to the room.
    fn expire(
        &mut self,
        voices: &HashMap<String, Voice>,
        unsaid: &mut Unsaid,
        tx: &mpsc::Sender<Request>,
    ) {
        let now = tokio::time::Instant::now();
        let late: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, (since, _))| now.duration_since(*since) >= THREAD_WAIT)
            .map(|(g, _)| g.clone())
            .collect();
        for group in late {
            if let Some((_, lines)) = self.waiting.remove(&group) {
                tracing::warn!(%group, lines = lines.len(), "a group's first message was not confirmed in time: its updates go to the room");
                for mut line in lines {
                    line.anchor = None;
                    unsaid.say(voices, line, tx);
                }
            }
        }
    }
}

/// What the engine has to say and has not said yet.
#[derive(Debug, Default)]
struct Speech {
    unsaid: Unsaid,
    threads: Threads,
}

fn carry_out(
    effects: Vec<Effect>,
    world: &World,
    speech: &mut Speech,
    tx: &mpsc::Sender<Request>,
    allowed: &action::Allowed,
) {
    let Speech { unsaid, threads } = speech;
    for e in effects {
        match e {
            Effect::Say { bot, room, text } => {
                let dest = Destination::room(room);
                let line = Line {
                    bot,
                    dest,
                    text,
                    anchor: None,
                    card: None,
                };
                unsaid.say(&world.voices, line, tx);
            }
            Effect::Ask {
                bot,
                room,
                text,
                card,
            } => {
                let line = Line {
                    bot,
                    dest: Destination::room(room),
                    text,
                    anchor: None,
                    card: Some(card),
                };
                unsaid.say(&world.voices, line, tx);
            }
            Effect::Notify {
                bot,
                room,
                thread,
                anchor,
                text,
            } => {
                let dest = match thread {
                    Some(parent) => Destination::thread(room, parent),
                    None => Destination::room(room),
                };
                let line = Line {
                    bot,
                    dest,
                    text,
                    anchor,
                    card: None,
                };
                threads.notify(line, &world.voices, unsaid, tx);
            }
            Effect::Run(a) if world.remote.is_some() => {
                let queue = world.remote.as_ref().expect("checked");
                if let Err(e) = queue.try_send((a, tokio::time::Instant::now())) {
                    let (a, _) = match e {
                        mpsc::error::TrySendError::Full(a)
                        | mpsc::error::TrySendError::Closed(a) => a,
                    };
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let outcome = Outcome {
                            ok: false,
                            summary: format!(
                                "not run: {REMOTE_QUEUE} actions already wait for the cluster (NATS unreachable?)"
                            ),
                            output: String::new(),
                        };
                        let _ = tx.send(Request::Finished(a.id, outcome)).await;
                    });
                }
            }
            Effect::Run(a) => {
                let tx = tx.clone();
                let allowed = allowed.clone();
                let heal = world.heal.clone();
                tokio::spawn(async move {
                    tracing::info!(action = %a.label(), plan = %a.plan_line, "action started");
                    let outcome = action::run(&a.plan, &allowed, &*heal).await;
                    let _ = tx.send(Request::Finished(a.id, outcome)).await;
                });
            }
        }
    }
}

async fn run(
    mut core: Core,
    effects: Vec<Effect>,
    mut rx: mpsc::Receiver<Request>,
    tx: mpsc::Sender<Request>,
    world: World,
    reload: Reloader,
    shared: Arc<Shared>,
) {
    let allowed = || core_allowed(&shared);
    let mut speech = Speech::default();
    carry_out(effects, &world, &mut speech, &tx, &allowed());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        let request = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => r,
                None => return,
            },
            _ = tick.tick() => {
                speech.unsaid.retry(&world.voices, &tx);
                speech
                    .threads
                    .expire(&world.voices, &mut speech.unsaid, &tx);
                match core.tick(now_ms()) {
                    Ok(fx) => carry_out(fx, &world, &mut speech, &tx, &allowed()),
                    Err(e) => tracing::error!(error = %e, "the engine's store failed"),
                }
                continue;
            }
            _ = hup => {
                let line = do_reload(&mut core, &reload, &shared, "SIGHUP");
                tracing::info!("{line}");
                continue;
            }
        };
        let now = now_ms();
        match request {
            Request::Alerts(n, reply) => {
                let count = n.alerts.len();
                let r = core.receive(&n, now).map(|fx| {
                    carry_out(fx, &world, &mut speech, &tx, &allowed());
                    count
                });
                let _ = reply.send(r);
            }
            Request::Approve(id, who, reply) => {
                let r = core.approve(id, &who, now).map(|(line, fx)| {
                    carry_out(fx, &world, &mut speech, &tx, &allowed());
                    line
                });
                let _ = reply.send(r);
            }
            Request::Deny(id, who, reason, reply) => {
                let _ = reply.send(core.deny(id, &who, &reason, now));
            }
            Request::Run {
                rule,
                values,
                who,
                bot,
                room,
                reply,
            } => {
                let request = format!("{now}-{}", fastrand_id());
                let r = core
                    .run_manual(&rule, values, &who, &bot, &room, &request, now)
                    .map(|(err, fx)| {
                        let asked = !fx.is_empty();
                        carry_out(fx, &world, &mut speech, &tx, &allowed());
                        err.unwrap_or_else(|| {
                            if asked {
                                String::new()
                            } else {
                                "nothing to do".into()
                            }
                        })
                    });
                let _ = reply.send(r);
            }
            Request::Pause(paused, who, reply) => {
                let _ = reply.send(core.set_paused(paused, &who));
            }
            Request::Silence(rule, d, who, reply) => {
                let _ = reply.send(core.silence(&rule, d, &who, now));
            }
            Request::Actions(reply) => {
                let _ = reply.send(core.summary_lines(10));
            }
            Request::Reload(who, reply) => {
                let _ = reply.send(Ok(do_reload(&mut core, &reload, &shared, &who)));
            }
            Request::Finished(id, outcome) => match core.finished(id, outcome, now) {
                Ok(fx) => carry_out(fx, &world, &mut speech, &tx, &allowed()),
                Err(e) => tracing::error!(error = %e, "the engine's store failed"),
            },
            Request::Worked(r) => {
                // Each engine numbers its own actions: a result for another engine's action
                // (one that held the lead before) must not finish this one's of that number.
                match core.action(r.id) {
                    Ok(Some(a)) if a.key == r.key => {}
                    Ok(_) => {
                        tracing::info!(
                            id = r.id,
                            "a worker's result for an action this engine did not publish; left alone"
                        );
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the engine's store failed");
                        continue;
                    }
                }
                let fx = match r.outcome {
                    Some(o) => core.finished(r.id, o, now),
                    None => core.unknown(
                        r.id,
                        r.why.as_deref().unwrap_or("the worker could not tell"),
                        now,
                    ),
                };
                match fx {
                    Ok(fx) => carry_out(fx, &world, &mut speech, &tx, &allowed()),
                    Err(e) => tracing::error!(error = %e, "the engine's store failed"),
                }
            }
            Request::Threaded {
                group,
                bot,
                written,
            } => {
                if let Ok(Some(id)) = &written
                    && let Err(e) = core.threaded(&group, id)
                {
                    tracing::error!(error = %e, "the engine's store failed");
                }
                let Speech { unsaid, threads } = &mut speech;
                threads.started(&group, &bot, written, &world.voices, unsaid, &tx);
            }
        }
    }
}

fn core_allowed(shared: &Shared) -> action::Allowed {
    shared
        .config
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .allowed
        .clone()
}

fn do_reload(core: &mut Core, reload: &Reloader, shared: &Shared, who: &str) -> String {
    match reload() {
        Ok(cfg) => {
            let cfg = Arc::new(cfg);
            *shared.config.lock().unwrap_or_else(|p| p.into_inner()) = cfg.clone();
            core.reload(cfg, who)
                .unwrap_or_else(|e| format!("rules reloaded, but the audit failed: {e}"))
        }
        Err(e) => {
            if let Err(a) = core.reload_refused(who, &e) {
                tracing::error!(error = %a, "the engine's store failed");
            }
            format!("reload refused, the rules in force stay: {e}")
        }
    }
}

/// A short random id for a manual request.
fn fastrand_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(now_ms());
    format!("{:016x}", h.finish())
}

/// Hands actions to the cluster's workers and their results back to the engine. An action
/// that NATS has not taken within the cluster's `publish_timeout` of its arrival is reported
/// "not run".
#[cfg(feature = "cluster")]
async fn dispatch(
    cfg: crate::cluster::ClusterConfig,
    mut queue: mpsc::Receiver<(Box<crate::record::ActionRecord>, tokio::time::Instant)>,
    tx: mpsc::Sender<Request>,
    results_here: bool,
) {
    use crate::cluster::Dispatcher;
    let within = cfg.publish_timeout;
    let mut connected: Option<Dispatcher> = None;
    let not_run = |id: u64, why: String| {
        let tx = tx.clone();
        async move {
            let outcome = Outcome {
                ok: false,
                summary: format!("not run: {why}"),
                output: String::new(),
            };
            let _ = tx.send(Request::Finished(id, outcome)).await;
        }
    };
    while let Some((a, since)) = queue.recv().await {
        let deadline = since + within;
        let secs = within.as_secs();
        loop {
            let d = match &connected {
                Some(d) => d.clone(),
                None => {
                    match tokio::time::timeout_at(deadline, Dispatcher::new(cfg.clone())).await {
                        Ok(Ok(d)) => {
                            tracing::info!("the engine reaches its workers through NATS");
                            if results_here {
                                read_results(d.clone(), tx.clone());
                            }
                            connected = Some(d.clone());
                            d
                        }
                        Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                            tracing::warn!(error = %e, "cannot reach the cluster; trying again");
                            let next = tokio::time::Instant::now() + Duration::from_secs(1);
                            tokio::time::sleep_until(deadline.min(next)).await;
                            continue;
                        }
                        Ok(Err(e)) => {
                            let why =
                                format!("the cluster could not be reached within {secs}s ({e})");
                            not_run(a.id, why).await;
                            break;
                        }
                        Err(_) => {
                            let why = format!("the cluster could not be reached within {secs}s");
                            not_run(a.id, why).await;
                            break;
                        }
                    }
                }
            };
            match tokio::time::timeout_at(deadline, d.publish(&a)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(action = %a.label(), error = %e, "publishing; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(Err(e)) => {
                    let why = format!("the cluster did not take it within {secs}s ({e})");
                    not_run(a.id, why).await;
                    break;
                }
                Err(_) => {
                    let why = format!("the cluster did not take it within {secs}s");
                    not_run(a.id, why).await;
                    break;
                }
            }
        }
    }
}

/// Forwards the alerts this process is given to the engine that holds the lead, through NATS;
/// each is answered once NATS has stored it, or with why not.
#[cfg(feature = "cluster")]
async fn forward(cfg: crate::cluster::ClusterConfig, mut intake: mpsc::Receiver<Forward>) {
    use crate::cluster::Dispatcher;
    let mut connected: Option<Dispatcher> = None;
    while let Some((n, reply)) = intake.recv().await {
        if connected.is_none() {
            match tokio::time::timeout(Duration::from_secs(10), Dispatcher::new(cfg.clone())).await
            {
                Ok(Ok(d)) => connected = Some(d),
                Ok(Err(e)) => {
                    let _ = reply.send(Err(format!("NATS cannot be reached: {e}")));
                    continue;
                }
                Err(_) => {
                    let _ = reply.send(Err("NATS cannot be reached".into()));
                    continue;
                }
            }
        }
        let Some(d) = &connected else { continue };
        let r = match tokio::time::timeout(Duration::from_secs(10), d.forward(&n)).await {
            Ok(Ok(())) => Ok(n.alerts.len()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("NATS did not take the alerts in time".into()),
        };
        let _ = reply.send(r);
    }
}

/// While this process holds the engine's lead: takes the alerts forwarded through NATS and the
/// workers' results, and nothing while it does not (another engine decides then).
#[cfg(feature = "cluster")]
async fn lead_work(
    cfg: crate::cluster::ClusterConfig,
    lead: opsbot::lead::Lead,
    bounds: Bounds,
    tx: mpsc::Sender<Request>,
) {
    use crate::cluster::Dispatcher;
    loop {
        lead.held().await;
        let d = match Dispatcher::new(cfg.clone()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "the engine's lead: NATS cannot be reached; again in 2s");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        tracing::info!("this process's engine decides: it takes alerts and results");
        let alerts_tx = tx.clone();
        let results_tx = tx.clone();
        let alerts = d.alerts(&bounds, move |n| {
            let tx = alerts_tx.clone();
            async move {
                let (reply, answer) = oneshot::channel();
                if tx.send(Request::Alerts(Box::new(n), reply)).await.is_err() {
                    return false;
                }
                matches!(answer.await, Ok(Ok(_)))
            }
        });
        let results = d.results(move |r| {
            let back = results_tx.clone();
            async move { back.send(Request::Worked(r)).await.is_ok() }
        });
        tokio::select! {
            r = alerts => if let Err(e) = r {
                tracing::warn!(error = %e, "reading forwarded alerts; again in 2s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            },
            r = results => if let Err(e) = r {
                tracing::warn!(error = %e, "reading workers' results; again in 2s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            },
            () = lead.lost() => {
                tracing::info!("this process's engine no longer decides: another holds its lead");
            }
        }
    }
}

/// Reads the workers' results for the engine, for the life of the process.
#[cfg(feature = "cluster")]
fn read_results(d: crate::cluster::Dispatcher, tx: mpsc::Sender<Request>) {
    tokio::spawn(async move {
        loop {
            let back = tx.clone();
            let ended = d
                .results(move |r| {
                    let back = back.clone();
                    async move { back.send(Request::Worked(r)).await.is_ok() }
                })
                .await;
            if let Err(e) = ended {
                tracing::warn!(error = %e, "reading workers' results; again in 2s");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

/// Without the feature the config check refuses `[cluster]`: no alert is forwarded anywhere.
#[cfg(not(feature = "cluster"))]
async fn forward(_: crate::cluster::ClusterConfig, mut intake: mpsc::Receiver<Forward>) {
    while let Some((_, reply)) = intake.recv().await {
        let _ = reply.send(Err(
            "this opsbot was built without the `cluster` feature".into()
        ));
    }
}

#[cfg(not(feature = "cluster"))]
async fn lead_work(
    _: crate::cluster::ClusterConfig,
    _: opsbot::lead::Lead,
    _: Bounds,
    _: mpsc::Sender<Request>,
) {
}

#[cfg(not(feature = "cluster"))]
async fn dispatch(
    _: crate::cluster::ClusterConfig,
    mut queue: mpsc::Receiver<(Box<crate::record::ActionRecord>, tokio::time::Instant)>,
    tx: mpsc::Sender<Request>,
    _: bool,
) {
    // The config check refuses [cluster] in such a build; should one come anyway, nothing
    // claims to have run.
    while let Some((a, _)) = queue.recv().await {
        let outcome = Outcome {
            ok: false,
            summary: "not run: this opsbot was built without the `cluster` feature".into(),
            output: String::new(),
        };
        let _ = tx.send(Request::Finished(a.id, outcome)).await;
    }
}
