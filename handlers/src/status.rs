//! `!status`: what is running and how it is doing, read from the health registry.

use std::time::{Duration, SystemTime};

use opsbot::breaker::BreakerState;
use opsbot::health::{ActorKind, ActorState, ActorStatus, Snapshot};
use opsbot::lead::{Holder, LeadStatus};
use opsbot::prelude::*;

/// The status handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct Status;

impl Handler for Status {
    const NAME: &'static str = "status";
    const COMMANDS: &'static [Command] = &[Command::new(
        "status",
        "",
        "Show version, uptime, connection, each handler's and poller's state, breakers and the outbox.",
    )];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        call.expect_args(0, 0)?;
        cx.reply_rich(report(&cx.status(), SystemTime::now()));
        Ok(())
    }
}

/// A duration as people read it: `3d4h`, `2h05m`, `4m10s`, `12s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn ago(t: SystemTime, now: SystemTime) -> String {
    format!("{} ago", human(now.duration_since(t).unwrap_or_default()))
}

/// Keeps an error readable in one chat line.
fn short(e: &str) -> String {
    const MAX: usize = 120;
    if e.chars().count() <= MAX {
        e.to_owned()
    } else {
        let cut: String = e.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// A child's state in words; a failed one says why it is no longer started.
fn state(a: &ActorStatus) -> &'static str {
    match a.state {
        ActorState::Failed => "failed (disabled after repeated crashes)",
        ref s => s.as_str(),
    }
}

fn common(a: &ActorStatus, now: SystemTime, out: &mut String) {
    if a.restarts > 0 {
        out.push_str(&format!(
            ", {} restart{}",
            a.restarts,
            if a.restarts == 1 { "" } else { "s" }
        ));
    }
    if let Some((at, e)) = &a.last_error {
        out.push_str(&format!(", last error {}: {}", ago(*at, now), short(e)));
    }
}

/// Who speaks for the bot when several processes carry it:
/// `lead: this process (host-a:41), for 4m10s`, or `lead: host-b:77 for 12s; this process
/// (host-a:41) stands by`.
pub fn lead_line(lead: &LeadStatus, now: SystemTime) -> String {
    let since = |h: &Holder| human(now.duration_since(h.since).unwrap_or_default());
    match (&lead.holder, lead.held) {
        (Some(h), true) => format!("lead: this process ({}), for {}", lead.me, since(h)),
        (Some(h), false) if h.id != lead.me => format!(
            "lead: {} for {}; this process ({}) stands by",
            h.id,
            since(h),
            lead.me
        ),
        _ => format!("lead: nobody known; this process ({}) stands by", lead.me),
    }
}

/// The whole status report as plain text.
pub fn render(s: &Snapshot, now: SystemTime) -> String {
    report(s, now).plain()
}

/// The whole status report: the summary as its heading, then one line per part, its name in
/// bold.
pub fn report(s: &Snapshot, now: SystemTime) -> Rich {
    let mut lines = lines(s, now).into_iter();
    let mut out = Rich::new().heading(lines.next().unwrap_or_default());
    for l in lines {
        out = out.para(match l.split_once(": ") {
            // A part's name: `transport irc`, `handler echo`, `outbox`, `lead`.
            Some((name, rest)) if !name.contains([',', '(']) => {
                Line::new().bold(name).text(format!(": {rest}"))
            }
            _ => Line::new().text(l),
        });
    }
    out
}

fn lines(s: &Snapshot, now: SystemTime) -> Vec<String> {
    let mut lines = vec![
        s.summary(),
        format!(
            "opsbot {} · bot {} · up {}",
            opsbot::VERSION,
            s.bot,
            human(s.uptime),
        ),
    ];
    if let Some(lead) = &s.lead {
        lines.push(lead_line(lead, now));
    }
    for a in &s.actors {
        let mut l = match a.kind {
            ActorKind::Transport => {
                let conn = a.conn.as_ref().map_or("starting", |c| c.as_str());
                let mut l = format!("transport {}: {conn}", a.name);
                if let Some(d) = &a.detail {
                    l.push_str(&format!(" ({d})"));
                }
                l.push_str(&format!(
                    ", {} reconnect{}",
                    a.reconnects,
                    if a.reconnects == 1 { "" } else { "s" }
                ));
                l
            }
            ActorKind::Handler => {
                format!("handler {}: {}, {} handled", a.name, state(a), a.handled)
            }
            ActorKind::Poller => {
                let mut l = format!("poller {}: {}, {} posted", a.name, state(a), a.handled);
                if let Some(t) = a.last_run {
                    l.push_str(&format!(", last run {}", ago(t, now)));
                }
                if let Some(t) = a.next_run {
                    let next = t.duration_since(now).unwrap_or_default();
                    l.push_str(&format!(", next in {}", human(next)));
                }
                l
            }
        };
        common(a, now, &mut l);
        lines.push(l);
    }
    if let Some(trouble) = &s.store {
        lines.push(format!("state store: {trouble}"));
    }
    for b in &s.breakers {
        let mut l = format!(
            "breaker {}{}: {}",
            b.name,
            if b.site { " (a linked site)" } else { "" },
            b.state.as_str()
        );
        match b.state {
            BreakerState::Open { until } => l.push_str(&format!(
                ", next try in {}",
                human(until.duration_since(now).unwrap_or_default())
            )),
            BreakerState::HalfOpen => l.push_str(", trying once"),
            BreakerState::Closed => {}
        }
        l.push_str(&format!(
            ", {} recent failure{}, opened {} time{}",
            b.failures,
            if b.failures == 1 { "" } else { "s" },
            b.opened,
            if b.opened == 1 { "" } else { "s" }
        ));
        if let Some((at, e)) = &b.last_error {
            l.push_str(&format!(", last error {}: {}", ago(*at, now), short(e)));
        }
        lines.push(l);
    }
    let o = &s.outbox;
    // The same counters, by the same names, as the JSON API and /metrics.
    let mut l = format!(
        "outbox: {} queued, {} sent, {} dropped",
        o.queued,
        o.sent,
        o.dropped_total()
    );
    let reasons: Vec<String> = o
        .dropped_by_reason()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    if !reasons.is_empty() {
        l.push_str(&format!(" ({})", reasons.join(", ")));
    }
    lines.push(l);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lead_line_says_who_speaks_and_since_when() {
        let now = SystemTime::now();
        let lead = opsbot::lead::Lead::elected("host-a:41");
        lead.grant(
            std::time::Instant::now() + Duration::from_secs(60),
            now - Duration::from_secs(250),
        );
        assert_eq!(
            lead_line(&lead.status().unwrap(), now),
            "lead: this process (host-a:41), for 4m10s"
        );
        lead.revoke(Some(Holder::new(
            "host-b:77",
            now - Duration::from_secs(12),
        )));
        assert_eq!(
            lead_line(&lead.status().unwrap(), now),
            "lead: host-b:77 for 12s; this process (host-a:41) stands by"
        );
        lead.revoke(None);
        assert_eq!(
            lead_line(&lead.status().unwrap(), now),
            "lead: nobody known; this process (host-a:41) stands by"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(12)), "12s");
        assert_eq!(human(Duration::from_secs(250)), "4m10s");
        assert_eq!(human(Duration::from_secs(7500)), "2h05m");
        assert_eq!(human(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d4h");
    }
}
