//! Bots (and engines) in active/standby across processes: one lease per bot, and one for the
//! engine, on NATS JetStream.
//!
//! Several `opsbot run` processes may carry the same bot; the one holding the bot's lease
//! speaks for it (the framework obeys an [`opsbot::lead::Lead`], see there), the others stand
//! by. The leases live in a bucket laid out as JetStream lays out a KV bucket (stream
//! `KV_<name>_leases`, subject `$KV.<name>_leases.<bot>`, one value per key, file storage),
//! whose `max_age` is the lease's time to live: the *server* forgets a lease that was not
//! renewed in time, so no process's clock decides who may take it.
//!
//! - Taking a free lease publishes with "expected last subject sequence" 0 (or that of the
//!   released value), so of two standbys one wins; renewing publishes with the sequence this
//!   process last wrote, so a holder whose lease expired and was taken fails to renew, and
//!   stops speaking at once.
//! - The holder counts its lead from the moment it *sent* the renewal, and gives it up a tenth
//!   of the time to live before the server can forget it, so the old holder is quiet before a
//!   standby can take over; a holder cut off from NATS, or frozen (SIGSTOP), runs out by its
//!   own clock without hearing anything.
//! - A process that stops releases its leases (a value with no holder, written only over its
//!   own), so a standby takes over at its next look rather than after the time to live.
//!
//! Every hand-over this process sees is in the healing log (the transport host says when it
//! connects or goes quiet) and in the audit trail (`lead acquired`, `lead lost`, `lead
//! released`).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use opsbot::lead::{Holder, Lead};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{ClusterConfig, token};
use crate::audit::Audit;

/// A lease's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Value {
    /// Who holds it; `None`: released.
    holder: Option<String>,
    /// Since when, in Unix milliseconds.
    since_ms: u64,
}

/// What this process knows of one lease: a bot's, or the engine's.
struct Lease {
    /// What it is the lease of, as logs and the audit name it: `ops` (a bot), `engine`.
    bot: String,
    /// Its key in the bucket: `bot:<name>`, or `engine`.
    key: String,
    /// The engine's lease, which the bots' follow (see [`spawn_elector`]).
    primary: bool,
    lead: Lead,
    /// The sequence of the value this process last wrote while holding it.
    held: Option<(u64, SystemTime)>,
    /// Whether the last look at it failed (said once per failure streak).
    failing: bool,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The value of a lease held by `me` since `since`.
fn v_mine(me: &str, since: SystemTime) -> Value {
    Value {
        holder: Some(me.to_owned()),
        since_ms: ms(since),
    }
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The leases bucket of `cfg`, made if missing. Its `max_age` is the time to live that counts,
/// even when this process's `lease_ttl` says otherwise (answered, with a warning then).
async fn bucket(
    js: &jetstream::Context,
    cfg: &ClusterConfig,
) -> Result<(stream::Stream, Duration), String> {
    let name = cfg.leases_bucket();
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            max_age: cfg.lease_ttl,
            allow_rollup: true,
            deny_delete: true,
            num_replicas: cfg.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("the leases bucket: {e}"))?;
    let ttl = stream
        .info()
        .await
        .map_err(|e| format!("the leases bucket: {e}"))?
        .config
        .max_age;
    if ttl.is_zero() {
        // Made elsewhere without a max age: no lease would ever expire.
        return Err(format!(
            "the leases bucket KV_{name} keeps values for ever (no max age): it cannot hold leases; delete it or give it a max age"
        ));
    }
    if ttl != cfg.lease_ttl {
        tracing::warn!(
            bucket = %name,
            configured = ?cfg.lease_ttl,
            in_use = ?ttl,
            "[cluster] lease_ttl differs from the leases bucket's; the bucket's counts"
        );
    }
    Ok((stream, ttl))
}

/// What happened to a write.
enum Wrote {
    /// Written, with this sequence.
    Yes(u64),
    /// Someone wrote the key since (or it expired): not written.
    Lost,
}

struct Session {
    js: jetstream::Context,
    stream: stream::Stream,
    bucket: String,
    ttl: Duration,
    me: String,
    audit: Option<Audit>,
}

impl Session {
    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{}", self.bucket, token(key))
    }

    /// How long a holder may speak after sending a renewal: a tenth of the time to live short
    /// of when the server could forget it.
    fn margin(&self) -> Duration {
        self.ttl / 10
    }

    async fn write(&self, key: &str, v: &Value, expected: u64) -> Result<Wrote, String> {
        let payload = serde_json::to_vec(v).map_err(|e| e.to_string())?;
        let sent = self
            .js
            .send_publish(
                self.subject(key),
                jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .expected_last_subject_sequence(expected),
            )
            .await
            .map_err(|e| e.to_string())?;
        match sent.await {
            Ok(ack) => Ok(Wrote::Yes(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Wrote::Lost),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The lease's value and its sequence, if it has one.
    async fn read(&self, key: &str) -> Result<Option<(Value, u64)>, String> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(key))
            .await
        {
            Ok(m) => {
                // A value that does not read is nobody's: it can be taken over.
                let v = serde_json::from_slice(&m.payload).unwrap_or(Value {
                    holder: None,
                    since_ms: 0,
                });
                Ok(Some((v, m.sequence)))
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn audit(&self, step: &str, bot: &str, detail: &str) {
        if let Some(a) = &self.audit
            && let Err(e) = a.record(step, &self.me, bot, detail)
        {
            tracing::warn!(error = %e, "the audit trail could not be written");
        }
    }

    fn lost(&self, l: &mut Lease, holder: Option<Holder>, why: &str) {
        if l.held.take().is_some() {
            let by = holder
                .as_ref()
                .map_or("nobody yet".to_owned(), |h| h.id.clone());
            tracing::warn!(bot = %l.bot, holder = %by, "{why}: the bot's lead is lost");
            self.audit("lead lost", &l.bot, &format!("{why}; now held by {by}"));
        }
        l.lead.revoke(holder);
    }

    /// One look at one lease: renews it when held, takes it when free (and `may_take`), else
    /// notes who has it.
    async fn look(&self, l: &mut Lease, may_take: bool) -> Result<(), String> {
        let sent = Instant::now();
        if let Some((seq, since)) = l.held {
            let v = Value {
                holder: Some(self.me.clone()),
                since_ms: ms(since),
            };
            match self.write(&l.key, &v, seq).await? {
                Wrote::Yes(seq) => {
                    l.held = Some((seq, since));
                    l.lead.grant(sent + self.ttl - self.margin(), since);
                }
                Wrote::Lost => {
                    let current = self.read(&l.key).await.ok().flatten();
                    if let Some((v, seq)) = &current
                        && v.holder.as_deref() == Some(&self.me)
                    {
                        // Still ours: a renewal whose answer this process never heard moved
                        // the sequence. Renewed from there, the lead goes on without a blip.
                        let again = Instant::now();
                        if let Wrote::Yes(seq) =
                            self.write(&l.key, &v_mine(&self.me, since), *seq).await?
                        {
                            l.held = Some((seq, since));
                            l.lead.grant(again + self.ttl - self.margin(), since);
                            return Ok(());
                        }
                    }
                    let holder = current
                        .and_then(|(v, _)| v.holder.map(|h| Holder::new(h, at_ms(v.since_ms))));
                    self.lost(l, holder, "the lease expired before it was renewed");
                }
            }
            return Ok(());
        }
        let current = self.read(&l.key).await?;
        if !may_take {
            let holder = current.and_then(|(v, _)| {
                v.holder
                    .filter(|h| *h != self.me)
                    .map(|h| Holder::new(h, at_ms(v.since_ms)))
            });
            l.lead.revoke(holder);
            return Ok(());
        }
        let expected = match &current {
            None => 0,
            Some((v, seq)) => match &v.holder {
                // Released, or unreadable: free.
                None => *seq,
                // Ours (a renewal this process never heard answered): renew it first.
                Some(h) if *h == self.me => *seq,
                Some(h) => {
                    l.lead
                        .revoke(Some(Holder::new(h.clone(), at_ms(v.since_ms))));
                    return Ok(());
                }
            },
        };
        let since = match &current {
            Some((v, _)) if v.holder.as_deref() == Some(&self.me) => at_ms(v.since_ms),
            _ => SystemTime::now(),
        };
        let v = Value {
            holder: Some(self.me.clone()),
            since_ms: ms(since),
        };
        let sent = Instant::now();
        match self.write(&l.key, &v, expected).await? {
            Wrote::Yes(seq) => {
                l.held = Some((seq, since));
                l.lead.grant(sent + self.ttl - self.margin(), since);
                tracing::info!(bot = %l.bot, me = %self.me, "this process holds the bot's lead");
                self.audit("lead acquired", &l.bot, "this process speaks for it");
            }
            // Another standby was quicker: who it is shows at the next look.
            Wrote::Lost => {}
        }
        Ok(())
    }

    /// Releases the leases this process holds: a value with no holder, written over its own.
    async fn release(&self, leases: &mut [Lease]) {
        for l in leases.iter_mut() {
            self.release_one(l, "this process stopped").await;
        }
    }

    /// Releases one lease, if this process holds it.
    async fn release_one(&self, l: &mut Lease, why: &str) {
        let Some((seq, _)) = l.held.take() else {
            return;
        };
        l.lead.revoke(None);
        let v = Value {
            holder: None,
            since_ms: ms(SystemTime::now()),
        };
        match self.write(&l.key, &v, seq).await {
            Ok(Wrote::Yes(_)) => self.audit("lead released", &l.bot, why),
            Ok(Wrote::Lost) => {}
            Err(e) => tracing::warn!(bot = %l.bot, error = %e, "the lease could not be released"),
        }
    }
}

/// The running elector of a process.
#[derive(Debug)]
pub struct Elector {
    stop: CancellationToken,
    done: std::sync::mpsc::Receiver<()>,
}

impl Elector {
    /// Stops electing, and releases the leases this process holds, waiting at most `within`
    /// for NATS to take the release; answers whether it did.
    pub fn stop(self, within: Duration) -> bool {
        self.stop.cancel();
        self.done.recv_timeout(within).is_ok()
    }
}

/// Elects this process (`me`) for each bot's lead, and the engine's when it runs one, on the
/// cluster's NATS, on a thread of its own, until stopped. Without NATS no lead is held: the
/// bots stand by (their leads run out by themselves) and the elector tries again every few
/// seconds.
///
/// The engine decides where its bots speak: a process that runs the engine takes a bot's lease
/// only while it holds the engine's, and lets its bots' go when it loses that, so that the
/// engine's notifications and the approvals it hears are in the same process.
pub fn spawn_elector(
    cfg: ClusterConfig,
    me: String,
    bots: HashMap<String, Lead>,
    engine: Option<Lead>,
    audit: Option<Audit>,
) -> std::io::Result<Elector> {
    let stop = CancellationToken::new();
    let (tx, done) = std::sync::mpsc::channel();
    let token = stop.clone();
    std::thread::Builder::new()
        .name("elector".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the elector");
            rt.block_on(elect(cfg, me, bots, engine, audit, token));
            let _ = tx.send(());
        })?;
    Ok(Elector { stop, done })
}

async fn elect(
    cfg: ClusterConfig,
    me: String,
    bots: HashMap<String, Lead>,
    engine: Option<Lead>,
    audit: Option<Audit>,
    stop: CancellationToken,
) {
    // The engine's first: the bots' follow it.
    let mut leases: Vec<Lease> = engine
        .map(|lead| Lease {
            bot: "engine".into(),
            key: "engine".into(),
            primary: true,
            lead,
            held: None,
            failing: false,
        })
        .into_iter()
        .chain(bots.into_iter().map(|(bot, lead)| Lease {
            key: format!("bot:{bot}"),
            bot,
            primary: false,
            lead,
            held: None,
            failing: false,
        }))
        .collect();
    loop {
        let elector = tokio::select! {
            r = connect(&cfg, &me, audit.clone()) => r,
            () = stop.cancelled() => return,
        };
        match elector {
            Ok(e) => {
                tracing::info!(me = %me, ttl = ?e.ttl, "electing this process for the bots' leads");
                run(&e, &mut leases, &stop).await;
                if stop.is_cancelled() {
                    e.release(&mut leases).await;
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "the leases: NATS unreachable; again in 2s"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn connect(cfg: &ClusterConfig, me: &str, audit: Option<Audit>) -> Result<Session, String> {
    let js = super::connect(cfg, &format!("lead {me}")).await?;
    let (stream, ttl) = bucket(&js, cfg).await?;
    Ok(Session {
        js,
        stream,
        bucket: cfg.leases_bucket(),
        ttl,
        me: me.to_owned(),
        audit,
    })
}

/// How often a standby looks at a lease at most: a released lease is taken within it.
const STANDBY_LOOK: Duration = Duration::from_secs(1);

/// Looks at every lease a third of the time to live apart (for a standby a quarter, at most
/// [`STANDBY_LOOK`], so that it takes over soon after the lease is free), until stopped. A look that fails is tried again
/// at the next turn; a held lead runs out by itself meanwhile.
async fn run(e: &Session, leases: &mut [Lease], stop: &CancellationToken) {
    loop {
        // Without a primary (no engine here), every bot's lease is taken on its own.
        let mut may_take = true;
        for l in leases.iter_mut() {
            if !l.primary && !may_take && l.held.is_some() {
                // The engine's lease went elsewhere: its bots follow it there.
                e.release_one(l, "the engine's lead went to another process")
                    .await;
            }
            // Each look is bounded: a hung server must not keep the others from their turn.
            let looked = tokio::time::timeout(e.ttl / 4, e.look(l, l.primary || may_take)).await;
            match looked {
                Ok(Ok(())) => l.failing = false,
                Ok(Err(err)) if !l.failing => {
                    l.failing = true;
                    tracing::warn!(bot = %l.bot, error = %err, "the bot's lease could not be looked at");
                }
                Err(_) if !l.failing => {
                    l.failing = true;
                    tracing::warn!(bot = %l.bot, "NATS did not answer about the bot's lease in time");
                }
                _ => {}
            }
            if l.held.is_some() && !l.lead.holds() {
                // Not renewed in time (NATS unreachable): the lead ran out.
                e.lost(l, None, "the lease could not be renewed in time");
            }
            if l.primary {
                may_take = l.held.is_some();
            }
        }
        let holding = leases.iter().any(|l| l.held.is_some());
        let pause = if holding {
            e.ttl / 3
        } else {
            (e.ttl / 4).min(STANDBY_LOOK)
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return,
        }
    }
}
