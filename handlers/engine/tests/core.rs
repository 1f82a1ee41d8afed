//! The engine's decisions: notifications, duplicates, approvals, overrides and restarts, on a
//! real state store (in memory, or a file where a restart matters).

use std::sync::Arc;
use std::time::Duration;

use opsbot::message::Identity;
use opsbot::store::Store;
use opsbot_engine::action::Outcome;
use opsbot_engine::alert::{Bounds, Notification};
use opsbot_engine::config::EngineConfig;
use opsbot_engine::core::{Core, Effect, Person};
use opsbot_engine::record::State;

const T0: u64 = 1_800_000_000_000;

fn config(extra: &str) -> Arc<EngineConfig> {
    let text = format!(
        r##"
        bot = "ops"
        programs = ["/usr/bin/systemctl"]
        approvers.oncall = ["alice@example.com", "bob@example.com", "carol@example.com"]
        approval_timeout = "10m"
        [[route]]
        match = ['severity=~"page|warn"']
        room = "#ops"
        [[rule]]
        name = "restart"
        match = ['alertname="WebDown"', 'service=~".+"']
        action = {{ kind = "command", program = "/usr/bin/systemctl", args = ["restart", "{{service}}"] }}
        target = "{{service}}"
        {extra}
        "##
    );
    let table: toml::Table = toml::from_str(&text).unwrap();
    Arc::new(EngineConfig::from_table(table, &["ops"]).unwrap())
}

fn payload(status: &str, service: &str, fingerprint: &str) -> Notification {
    let body = format!(
        r#"{{"version":"4","groupKey":"{{}}:{{alertname=\"WebDown\"}}","status":"{status}","receiver":"opsbot",
        "groupLabels":{{"alertname":"WebDown"}},"commonLabels":{{}},"commonAnnotations":{{}},"externalURL":"http://am",
        "truncatedAlerts":0,"alerts":[{{"status":"{status}","labels":{{"alertname":"WebDown","service":"{service}",
        "severity":"page","instance":"web-1"}},"annotations":{{"summary":"web is down"}},
        "startsAt":"2026-12-06T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"{fingerprint}"}}]}}"#
    );
    Notification::parse(body.as_bytes(), &Bounds::default()).unwrap()
}

fn person(id: &str) -> Person {
    Person {
        id: id.into(),
        identity: Identity::Address,
        verified: true,
    }
}

fn said(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Say { text, .. } | Effect::Notify { text, .. } | Effect::Ask { text, .. } => {
                Some(text.plain())
            }
            Effect::Run(_) => None,
        })
        .collect()
}

fn runs(effects: &[Effect]) -> Vec<u64> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Run(a) => Some(a.id),
            Effect::Say { .. } | Effect::Notify { .. } | Effect::Ask { .. } => None,
        })
        .collect()
}

fn ok() -> Outcome {
    Outcome {
        ok: true,
        summary: "exit status 0".into(),
        output: String::new(),
    }
}

#[test]
fn a_firing_group_is_posted_once_acted_on_once_and_resolved_in_reference() {
    let store = Store::in_memory("test");
    let (mut core, _) = Core::open(config(""), &store, T0).unwrap();
    let fx = core.receive(&payload("firing", "web", "f1"), T0).unwrap();
    let lines = said(&fx);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("[G1] FIRING WebDown: web-1: web is down"),
        "{lines:?}"
    );
    assert_eq!(
        lines[1],
        "[A1] running rule restart: run /usr/bin/systemctl restart web (for WebDown on web-1: web is down)"
    );
    let ran = runs(&fx);
    assert_eq!(ran, [1], "approval none runs at once");
    // The other Alertmanager of an HA pair sends the same: nothing more.
    assert!(
        core.receive(&payload("firing", "web", "f1"), T0 + 5)
            .unwrap()
            .is_empty()
    );
    // The same alert through another route of Alertmanager (another group): it is posted
    // there, but the action's key (rule, fingerprint, start) is taken.
    let mut other = payload("firing", "web", "f1");
    other.group_key = "{}/{severity=\"page\"}:{}".into();
    let fx = core.receive(&other, T0 + 6).unwrap();
    assert!(said(&fx)[0].starts_with("[G2] FIRING"), "{fx:?}");
    assert!(runs(&fx).is_empty(), "{fx:?}");
    let done = core.finished(1, ok(), T0 + 10).unwrap();
    assert!(
        said(&done)[0].starts_with("[A1] done: run /usr/bin/systemctl restart web"),
        "{:?}",
        said(&done)
    );
    // A worker's result told again (delivered twice) is said once, and so is one that comes
    // after the outcome was declared unknown.
    assert!(core.finished(1, ok(), T0 + 11).unwrap().is_empty());
    assert!(
        core.unknown(1, "worker w1 stopped", T0 + 12)
            .unwrap()
            .is_empty()
    );
    // The resolution refers to the first message and acts on nothing.
    let fx = core
        .receive(&payload("resolved", "web", "f1"), T0 + 60)
        .unwrap();
    assert_eq!(said(&fx), ["[G1] RESOLVED WebDown: web-1: web is down"]);
    assert!(runs(&fx).is_empty());
    let trail = core.audit_trail();
    assert_eq!(
        trail.verify().unwrap(),
        trail.newest(100).unwrap().len() as u64
    );
}

#[test]
fn one_approval_from_the_list_runs_it_and_others_are_refused() {
    let store = Store::in_memory("test");
    let (mut core, _) = Core::open(
        config("approval = \"one\"\napprovers = \"oncall\""),
        &store,
        T0,
    )
    .unwrap();
    let fx = core.receive(&payload("firing", "web", "f1"), T0).unwrap();
    assert!(runs(&fx).is_empty());
    let ask = &said(&fx)[1];
    assert!(
        ask.contains("[A1] rule restart wants to run /usr/bin/systemctl restart web")
            && ask.contains("!approve A1")
            && ask.contains("expires in 10m"),
        "{ask}"
    );
    let (reply, fx) = core
        .approve(1, &person("mallory@example.com"), T0 + 1)
        .unwrap();
    assert!(reply.contains("not on the approver list"), "{reply}");
    assert!(fx.is_empty());
    let mut unverified = person("alice@example.com");
    unverified.verified = false;
    let (reply, _) = core.approve(1, &unverified, T0 + 1).unwrap();
    assert!(reply.contains("not on the approver list"), "{reply}");
    let (reply, fx) = core
        .approve(1, &person("Alice@Example.com"), T0 + 2)
        .unwrap();
    assert_eq!(reply, "", "the line that says it runs says who approved it");
    assert!(
        said(&fx)[0].starts_with(
            "[A1] approved by Alice@Example.com; running rule restart: run /usr/bin/systemctl restart web"
        ),
        "{fx:?}"
    );
    assert_eq!(runs(&fx), [1]);
    let (reply, fx) = core.approve(1, &person("bob@example.com"), T0 + 3).unwrap();
    assert!(reply.contains("is running: nothing to approve"), "{reply}");
    assert!(fx.is_empty());
}

#[test]
fn two_approvals_need_two_people_and_never_the_requester() {
    let store = Store::in_memory("test");
    let (mut core, _) = Core::open(
        config("approval = \"two\"\napprovers = \"oncall\""),
        &store,
        T0,
    )
    .unwrap();
    core.receive(&payload("firing", "web", "f1"), T0).unwrap();
    let alice = person("alice@example.com");
    let (reply, fx) = core.approve(1, &alice, T0 + 1).unwrap();
    assert!(reply.contains("one more approval needed"), "{reply}");
    assert!(fx.is_empty());
    let (reply, fx) = core.approve(1, &alice, T0 + 2).unwrap();
    assert!(reply.contains("needs another person"), "{reply}");
    assert!(fx.is_empty());
    let (_, fx) = core.approve(1, &person("bob@example.com"), T0 + 3).unwrap();
    assert_eq!(runs(&fx), [1]);

    // A request by hand: its requester's approval does not count.
    let (err, fx) = core
        .run_manual(
            "restart",
            [("service".to_owned(), "api".to_owned())].into(),
            &person("carol@example.com"),
            "ops",
            "#ops",
            "r1",
            T0 + 10,
        )
        .unwrap();
    assert_eq!(err, None);
    assert!(
        said(&fx)[0].contains("[A2] rule restart wants to run /usr/bin/systemctl restart api"),
        "{fx:?}"
    );
    let (reply, fx) = core
        .approve(2, &person("carol@example.com"), T0 + 11)
        .unwrap();
    assert!(reply.contains("you asked for it"), "{reply}");
    assert!(fx.is_empty());
    let action = core.action(2).unwrap().unwrap();
    assert!(action.approved_by.is_empty());
}

#[test]
fn denied_and_expired_requests_do_nothing_and_say_so() {
    let store = Store::in_memory("test");
    let (mut core, _) = Core::open(
        config("approval = \"one\"\napprovers = \"oncall\""),
        &store,
        T0,
    )
    .unwrap();
    core.receive(&payload("firing", "web", "f1"), T0).unwrap();
    core.receive(&payload("firing", "db", "f2"), T0).unwrap();
    let reply = core
        .deny(1, &person("bob@example.com"), "maintenance", T0 + 1)
        .unwrap();
    assert_eq!(
        reply,
        "[A1] denied: run /usr/bin/systemctl restart web will not run (maintenance)"
    );
    let (reply, fx) = core
        .approve(1, &person("alice@example.com"), T0 + 2)
        .unwrap();
    assert!(reply.contains("is denied"), "{reply}");
    assert!(fx.is_empty());
    // Ten minutes pass: the second one expires, and an approval after that does nothing.
    assert!(core.tick(T0 + 9 * 60_000).unwrap().is_empty());
    let fx = core.tick(T0 + 10 * 60_000 + 1).unwrap();
    assert_eq!(
        said(&fx),
        ["[A2] expired: nobody decided in time; run /usr/bin/systemctl restart db was not done"]
    );
    let (reply, fx) = core
        .approve(2, &person("alice@example.com"), T0 + 11 * 60_000)
        .unwrap();
    assert!(reply.contains("is expired"), "{reply}");
    assert!(fx.is_empty());
    assert_eq!(core.action(2).unwrap().unwrap().state, State::Expired);
}

#[test]
fn an_approval_survives_a_restart_and_a_crash_mid_action_is_not_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = Store::open(&path).unwrap();
        let (mut core, _) = Core::open(
            config("approval = \"one\"\napprovers = \"oncall\""),
            &store,
            T0,
        )
        .unwrap();
        core.receive(&payload("firing", "web", "f1"), T0).unwrap();
        core.receive(&payload("firing", "db", "f2"), T0).unwrap();
        // A2 is approved and starts; the process stops before it finishes.
        let (_, fx) = core.approve(2, &person("bob@example.com"), T0 + 1).unwrap();
        assert_eq!(runs(&fx), [2]);
    }
    let store = Store::open(&path).unwrap();
    let (mut core, fx) = Core::open(
        config("approval = \"one\"\napprovers = \"oncall\""),
        &store,
        T0 + 100,
    )
    .unwrap();
    assert!(runs(&fx).is_empty(), "not run again: {fx:?}");
    assert_eq!(said(&fx).len(), 1);
    assert!(said(&fx)[0].starts_with("[A2] outcome unknown"), "{fx:?}");
    assert_eq!(core.action(2).unwrap().unwrap().state, State::Unknown);
    // The same alerts again: no new action, no new notification.
    assert!(
        core.receive(&payload("firing", "db", "f2"), T0 + 200)
            .unwrap()
            .is_empty()
    );
    // A1 still waits, and can be approved after the restart.
    let (_, fx) = core
        .approve(1, &person("alice@example.com"), T0 + 300)
        .unwrap();
    assert_eq!(runs(&fx), [1]);
    let steps: Vec<String> = core
        .audit_trail()
        .newest(100)
        .unwrap()
        .into_iter()
        .map(|e| e.step)
        .collect();
    assert!(steps.contains(&"outcome-unknown".to_owned()), "{steps:?}");
    assert!(core.audit_trail().verify().is_ok());
}

#[test]
fn a_rule_safe_to_repeat_runs_again_after_a_crash() {
    let store = Store::in_memory("test");
    let cfg = config("safe_to_repeat = true");
    {
        let (mut core, _) = Core::open(cfg.clone(), &store, T0).unwrap();
        assert_eq!(
            runs(&core.receive(&payload("firing", "web", "f1"), T0).unwrap()),
            [1]
        );
    }
    let (_, fx) = Core::open(cfg, &store, T0 + 100).unwrap();
    assert_eq!(runs(&fx), [1]);
    assert!(said(&fx)[0].contains("running it again"), "{fx:?}");
}

#[test]
fn cool_down_cap_silence_pause_and_dry_run() {
    let store = Store::in_memory("test");
    let (mut core, _) =
        Core::open(config("cooldown = \"10m\"\nmax_per_hour = 2"), &store, T0).unwrap();
    assert_eq!(
        runs(&core.receive(&payload("firing", "web", "f1"), T0).unwrap()),
        [1]
    );
    // Another alert for the same service within the cool-down: not acted on, and said so.
    let fx = core
        .receive(&payload("firing", "web", "f9"), T0 + 60_000)
        .unwrap();
    assert!(runs(&fx).is_empty());
    assert!(
        said(&fx)
            .iter()
            .any(|l| l.contains("web ran less than 10m ago")),
        "{fx:?}"
    );
    // Other targets are not cooling down, but the hourly cap holds.
    assert_eq!(
        runs(
            &core
                .receive(&payload("firing", "db", "f2"), T0 + 1000)
                .unwrap()
        ),
        [2]
    );
    let fx = core
        .receive(&payload("firing", "cache", "f3"), T0 + 2000)
        .unwrap();
    assert!(
        said(&fx)
            .iter()
            .any(|l| l.contains("ran 2 times in the last hour (cap 2)")),
        "{fx:?}"
    );
    assert!(runs(&fx).is_empty());

    let store = Store::in_memory("test");
    let (mut core, _) = Core::open(config(""), &store, T0).unwrap();
    core.silence(
        "restart",
        Duration::from_secs(3600),
        "alice@example.com",
        T0,
    )
    .unwrap();
    assert!(
        runs(
            &core
                .receive(&payload("firing", "web", "f1"), T0 + 1)
                .unwrap()
        )
        .is_empty()
    );
    assert_eq!(
        runs(
            &core
                .receive(&payload("firing", "web", "f2"), T0 + 3_600_001)
                .unwrap()
        ),
        [1],
        "after the silence"
    );
    core.set_paused(true, "bob@example.com").unwrap();
    let fx = core
        .receive(&payload("firing", "db", "f3"), T0 + 3_700_000)
        .unwrap();
    assert!(runs(&fx).is_empty());
    assert!(
        said(&fx)
            .iter()
            .any(|l| l.contains("automation is paused (by bob@example.com")),
        "{fx:?}"
    );
    core.set_paused(false, "bob@example.com").unwrap();

    let store = Store::in_memory("test");
    let (mut core, _) = Core::open(config("dry_run = true"), &store, T0).unwrap();
    let fx = core.receive(&payload("firing", "web", "f1"), T0).unwrap();
    assert!(runs(&fx).is_empty());
    assert!(
        said(&fx).iter().any(|l| l == "[A1] dry run of rule restart: would run /usr/bin/systemctl restart web (for WebDown on web-1: web is down); nothing was done"),
        "{fx:?}"
    );
}

#[test]
fn a_hostile_label_is_one_argument_in_the_plan() {
    let store = Store::in_memory("test");
    let (mut core, _) = Core::open(config(""), &store, T0).unwrap();
    let fx = core
        .receive(&payload("firing", "web; rm -rf / $(id)\\nx", "f1"), T0)
        .unwrap();
    let Some(Effect::Run(a)) = fx.iter().find(|e| matches!(e, Effect::Run(_))) else {
        panic!("{fx:?}")
    };
    let opsbot_engine::action::Plan::Command { args, .. } = &a.plan else {
        panic!()
    };
    assert_eq!(args, &["restart", "web; rm -rf / $(id)\nx"]);
    assert!(!a.plan_line.contains('\n'), "{}", a.plan_line);
}

#[test]
fn a_verified_action_says_whether_its_alert_resolved_in_time() {
    let store = Store::in_memory("test");
    let (mut core, _) = Core::open(config("verify = \"5m\""), &store, T0).unwrap();
    assert_eq!(
        runs(&core.receive(&payload("firing", "web", "f1"), T0).unwrap()),
        [1]
    );
    let done = core.finished(1, ok(), T0 + 1000).unwrap();
    assert!(
        said(&done)[0].ends_with("; waiting up to 5m for the alert to resolve"),
        "{done:?}"
    );
    let fx = core
        .receive(&payload("resolved", "web", "f1"), T0 + 61_000)
        .unwrap();
    assert!(
        said(&fx).contains(&"[A1] verified: the alert resolved 1m after the action".to_owned()),
        "{fx:?}"
    );
    assert!(core.tick(T0 + 10 * 60_000).unwrap().is_empty(), "said once");

    // Another that does not resolve in time.
    assert_eq!(
        runs(
            &core
                .receive(&payload("firing", "db", "f2"), T0 + 70_000)
                .unwrap()
        ),
        [2]
    );
    core.finished(2, ok(), T0 + 71_000).unwrap();
    assert!(core.tick(T0 + 71_000 + 299_000).unwrap().is_empty());
    let fx = core.tick(T0 + 71_000 + 300_000).unwrap();
    assert_eq!(
        said(&fx),
        ["[A2] not verified: WebDown on web-1: web is down still fires 5m after the action"]
    );
    // A failed action is not waited for.
    assert_eq!(
        runs(
            &core
                .receive(&payload("firing", "api", "f3"), T0 + 400_000)
                .unwrap()
        ),
        [3]
    );
    let failed = Outcome {
        ok: false,
        summary: "exit status 1".into(),
        output: String::new(),
    };
    let fx = core.finished(3, failed, T0 + 401_000).unwrap();
    assert!(!said(&fx)[0].contains("waiting"), "{fx:?}");
}

#[test]
fn a_storm_is_summed_up_not_flooded_and_nothing_is_lost() {
    let store = Store::in_memory("test");
    let (mut core, _) = Core::open(config("dry_run = true"), &store, T0).unwrap();
    let mut lines = Vec::new();
    for g in 0..30 {
        let mut n = payload("firing", &format!("s{g}"), &format!("f{g}"));
        n.group_key = format!("group-{g}");
        n.alerts[0]
            .labels
            .insert("alertname".into(), format!("Storm{g}"));
        lines.extend(
            said(&core.receive(&n, T0 + g * 100).unwrap())
                .into_iter()
                .filter(|l| l.contains("FIRING")),
        );
    }
    assert_eq!(lines.len(), 10, "a room's share for the minute: {lines:?}");
    assert!(core.tick(T0 + 10_000).unwrap().is_empty(), "not yet");
    let summary = said(&core.tick(T0 + 16_000).unwrap());
    assert_eq!(summary.len(), 1, "{summary:?}");
    assert!(
        summary[0].starts_with("[storm] 20 more notifications (20 alerts) in the last")
            && summary[0].contains("G11 Storm10 firing")
            && summary[0].ends_with("and 12 more groups"),
        "{summary:?}"
    );
    assert!(core.tick(T0 + 40_000).unwrap().is_empty(), "said once");
    // A minute later the room is quiet again: lines are posted as they come.
    let mut n = payload("firing", "late", "f-late");
    n.group_key = "group-late".into();
    let fx = core.receive(&n, T0 + 120_000).unwrap();
    assert!(said(&fx).iter().any(|l| l.contains("FIRING")), "{fx:?}");
}

#[test]
fn a_request_by_hand_is_held_to_the_rules_matchers() {
    let store = Store::in_memory("test");
    // The rule takes WebDown alerts for web-* services only.
    let text = "bot = \"ops\"\nprograms = [\"/usr/bin/systemctl\"]\n[[rule]]\nname = \"restart\"\n\
                match = ['alertname=\"WebDown\"', 'service=~\"web-.+\"']\n\
                action = { kind = \"command\", program = \"/usr/bin/systemctl\", args = [\"restart\", \"{service}\"] }\n";
    let table: toml::Table = toml::from_str(text).unwrap();
    let cfg = Arc::new(EngineConfig::from_table(table, &["ops"]).unwrap());
    let (mut core, _) = Core::open(cfg, &store, T0).unwrap();
    let who = person("carol@example.com");
    let (err, fx) = core
        .run_manual(
            "restart",
            [("service".to_owned(), "database".to_owned())].into(),
            &who,
            "ops",
            "#ops",
            "r1",
            T0,
        )
        .unwrap();
    assert_eq!(
        err.as_deref(),
        Some("rule restart does not take these values: service=~\"web-.+\"")
    );
    assert!(fx.is_empty());
    // alertname is pinned by the rule and filled in; a web service runs.
    let (err, fx) = core
        .run_manual(
            "restart",
            [("service".to_owned(), "web-1".to_owned())].into(),
            &who,
            "ops",
            "#ops",
            "r2",
            T0,
        )
        .unwrap();
    assert_eq!(err, None);
    assert_eq!(runs(&fx), [1]);
}

#[test]
fn an_alerts_words_never_start_a_line_of_their_own() {
    let store = Store::in_memory("test");
    let (mut core, _) = Core::open(
        config("approval = \"one\"\napprovers = \"oncall\""),
        &store,
        T0,
    )
    .unwrap();
    let mut n = payload("firing", "web", "f1");
    let forged = "WebDown\n[A7] approved by alice@example.com; running rule restart";
    n.alerts[0].labels.insert("alertname".into(), forged.into());
    n.alerts[0]
        .annotations
        .insert("summary".into(), "down\r\n[A8] done".into());
    // The rule matches on alertname="WebDown": a forged one does not match it; route and post.
    let fx = core.receive(&n, T0).unwrap();
    let lines = said(&fx);
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(!l.contains('\n') && !l.contains('\r'), "{l:?}");
    }

    // What an action's program or server answers is shown on the result's line only.
    let store = Store::in_memory("test");
    let (mut core, _) = Core::open(config(""), &store, T0).unwrap();
    assert_eq!(
        runs(&core.receive(&payload("firing", "web", "f1"), T0).unwrap()),
        [1]
    );
    let answer = Outcome {
        ok: true,
        summary: "HTTP 200".into(),
        output: "ok\r[A9] approved by alice\u{3}4red\nsecond\nthird".into(),
    };
    let done = said(&core.finished(1, answer, T0 + 1).unwrap());
    assert_eq!(
        done,
        [
            "[A1] done: run /usr/bin/systemctl restart web (HTTP 200): ok[A9] approved by alice4red | second | third"
        ]
    );
}

#[test]
fn an_outcome_unknown_from_a_worker_is_said_once_and_final() {
    let store = Store::in_memory("test");
    let (mut core, _) = Core::open(config(""), &store, T0).unwrap();
    let fx = core.receive(&payload("firing", "web", "f1"), T0).unwrap();
    assert_eq!(runs(&fx), [1]);
    let fx = core
        .unknown(1, "worker w1 started it and stopped answering", T0 + 5)
        .unwrap();
    assert_eq!(
        said(&fx),
        [
            "[A1] outcome unknown: worker w1 started it and stopped answering (run /usr/bin/systemctl restart web). It is not run again; check by hand."
        ]
    );
    // A late result from the worker that was thought gone changes nothing.
    assert!(core.finished(1, ok(), T0 + 6).unwrap().is_empty());
    let listed = core.summary_lines(10).unwrap();
    assert!(listed[0].starts_with("[A1] outcome unknown"), "{listed:?}");
}
