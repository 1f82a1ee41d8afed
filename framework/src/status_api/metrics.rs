//! `/metrics`: the health of every bot in the Prometheus text format (prometheus-client).

use super::*;

pub(super) async fn metrics(shared: web::Data<Shared>) -> HttpResponse {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &shared.registry) {
        tracing::error!(error = %e, "metrics: cannot encode");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        );
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(body)
}

/// Reads every bot's health at each scrape.
#[derive(Debug)]
pub(super) struct Metrics(pub(super) Vec<Health>);

pub(super) type Labels = Vec<(&'static str, String)>;

/// A label value as the text format needs it (the encoder writes values as given).
pub(super) fn lv(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(super) fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        value.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let snaps: Vec<Snapshot> = self.0.iter().map(Health::snapshot).collect();
        let bot = |s: &Snapshot| vec![("bot", lv(&s.bot))];
        let counter = |v: u64| ConstCounter::new(v);
        let gauge = |v: i64| ConstGauge::new(v);
        let states = [
            BotHealth::Healthy,
            BotHealth::Recovering,
            BotHealth::Degraded,
            BotHealth::Critical,
            BotHealth::Failed,
        ];
        family(
            &mut enc,
            "opsbot_health_state",
            "The bot's health: 1 for its current state, 0 for the others",
            MetricType::Gauge,
            snaps.iter().flat_map(|s| {
                states.iter().map(move |h| {
                    let mut l = bot(s);
                    l.push(("state", h.as_str().to_owned()));
                    (l, gauge(i64::from(s.health == *h)))
                })
            }),
        )?;
        family(
            &mut enc,
            "opsbot_messages_in",
            "Messages the bot heard and routed",
            MetricType::Counter,
            snaps.iter().map(|s| (bot(s), counter(s.inbound))),
        )?;
        family(
            &mut enc,
            "opsbot_messages_out",
            "Lines the outbox handed to the transport",
            MetricType::Counter,
            snaps.iter().map(|s| (bot(s), counter(s.outbox.sent))),
        )?;
        family(
            &mut enc,
            "opsbot_outbox_queued",
            "Lines waiting in the outbox",
            MetricType::Gauge,
            snaps
                .iter()
                .map(|s| (bot(s), gauge(s.outbox.queued as i64))),
        )?;
        family(
            &mut enc,
            "opsbot_outbox_dropped",
            "Lines the outbox did not send, by reason",
            MetricType::Counter,
            snaps.iter().flat_map(|s| {
                s.outbox
                    .dropped_by_reason()
                    .into_iter()
                    .map(move |(reason, n)| {
                        let mut l = bot(s);
                        l.push(("reason", reason.to_owned()));
                        (l, counter(n))
                    })
            }),
        )?;
        let per_actor = |s: &Snapshot, a: &ActorStatus| {
            let mut l = bot(s);
            l.push(("kind", a.kind.as_str().to_owned()));
            l.push(("name", lv(&a.name)));
            l
        };
        family(
            &mut enc,
            "opsbot_handled",
            "Commands and matches handled (handlers), items posted (pollers)",
            MetricType::Counter,
            snaps.iter().flat_map(|s| {
                s.actors
                    .iter()
                    .filter(|a| a.kind != ActorKind::Transport)
                    .map(move |a| (per_actor(s, a), counter(a.handled)))
            }),
        )?;
        family(
            &mut enc,
            "opsbot_restarts",
            "Restarts of handlers and pollers after a crash",
            MetricType::Counter,
            snaps.iter().flat_map(|s| {
                s.actors
                    .iter()
                    .filter(|a| a.kind != ActorKind::Transport)
                    .map(move |a| (per_actor(s, a), counter(u64::from(a.restarts))))
            }),
        )?;
        family(
            &mut enc,
            "opsbot_reconnects",
            "Times the transport lost its connection and reconnected",
            MetricType::Counter,
            snaps.iter().map(|s| {
                let n = s
                    .actor(ActorKind::Transport, &s.transport)
                    .map_or(0, |t| t.reconnects);
                (bot(s), counter(u64::from(n)))
            }),
        )?;
        family(
            &mut enc,
            "opsbot_lead_held",
            "1 while this process holds the bot's lead (always 1 for a bot carried by one process)",
            MetricType::Gauge,
            snaps.iter().map(|s| {
                (
                    bot(s),
                    gauge(i64::from(s.lead.as_ref().is_none_or(|l| l.held))),
                )
            }),
        )?;
        family(
            &mut enc,
            "opsbot_transport_connected",
            "1 while the transport is connected",
            MetricType::Gauge,
            snaps.iter().map(|s| {
                let up = s
                    .actor(ActorKind::Transport, &s.transport)
                    .is_some_and(|t| t.conn == Some(ConnState::Connected));
                (bot(s), gauge(i64::from(up)))
            }),
        )?;
        family(
            &mut enc,
            "opsbot_breaker_state",
            "Circuit breakers: 1 for the current state, 0 for the others",
            MetricType::Gauge,
            // Sites that chat users linked are left out: their names are the users' choice,
            // and a series per pasted host would grow without end.
            snaps.iter().flat_map(|s| {
                s.breakers.iter().filter(|b| !b.site).flat_map(move |b| {
                    ["closed", "open", "half-open"].into_iter().map(move |st| {
                        let mut l = bot(s);
                        l.push(("breaker", lv(&b.name)));
                        l.push(("state", st.to_owned()));
                        (l, gauge(i64::from(b.state.as_str() == st)))
                    })
                })
            }),
        )?;
        family(
            &mut enc,
            "opsbot_breaker_opened",
            "Times a circuit breaker opened",
            MetricType::Counter,
            snaps.iter().flat_map(|s| {
                s.breakers.iter().filter(|b| !b.site).map(move |b| {
                    let mut l = bot(s);
                    l.push(("breaker", lv(&b.name)));
                    (l, counter(u64::from(b.opened)))
                })
            }),
        )?;
        let mut m = enc.encode_descriptor(
            "opsbot_handler_duration_seconds",
            "How long handlers took per command or match",
            None,
            MetricType::Histogram,
        )?;
        for s in &snaps {
            for a in s.actors.iter().filter(|a| a.kind == ActorKind::Handler) {
                let mut l = bot(s);
                l.push(("handler", lv(&a.name)));
                let lat = &a.latency;
                let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::MAX])
                    .zip(lat.buckets.iter().copied())
                    .collect();
                m.encode_family(&l)?
                    .encode_histogram::<NoLabelSet>(lat.sum, lat.count, &buckets, None)?;
            }
        }
        Ok(())
    }
}
