use super::*;
use proptest::prelude::*;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_unix_seconds(1_800_000_000 + secs).unwrap()
}

fn digest(tag: u8) -> Sha256Digest {
    Sha256Digest([tag; 32])
}

fn image(tag: u8, version: &str) -> InstalledImage {
    InstalledImage {
        version: version.to_owned(),
        sha256: digest(tag),
        length: 1000 + u64::from(tag),
    }
}

fn target(id: &str, delta_source: Option<&InstalledImage>) -> Target {
    Target {
        deployment_id: id.to_owned(),
        name: "fw-2".to_owned(),
        version: "2.0.0".to_owned(),
        length: 1002,
        sha256: digest(2),
        security_version: 2,
        image_url: "/v1/blobs/full".to_owned(),
        delta: delta_source.map(|src| DeltaSource {
            source_sha256: src.sha256,
            source_length: src.length,
            length: 10,
            sha256: digest(9),
            url: "/v1/blobs/delta".to_owned(),
        }),
        preconditions: Preconditions::default(),
    }
}

fn factory() -> AgentState {
    AgentState::factory(SlotName::A, Some(image(1, "1.0.0")))
}

fn boot(booted: SlotName, active: SlotName, trying: Option<SlotName>) -> BootView {
    BootView {
        booted,
        active,
        trying,
    }
}

/// Runs `events` from `state`, returning the final state and every action.
fn run(state: &AgentState, events: Vec<Event>) -> (AgentState, Vec<Action>) {
    let mut state = state.clone();
    let mut all = Vec::new();
    for (i, event) in events.into_iter().enumerate() {
        let (next, actions) = step(&state, event, at(i as i64 * 10));
        state = next;
        all.extend(actions);
    }
    (state, all)
}

fn reports(actions: &[Action]) -> Vec<(ProgressPhase, u64, Option<String>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Report(r) => Some((r.phase, r.sequence, r.reason_code.clone())),
            _ => None,
        })
        .collect()
}

fn phases(actions: &[Action]) -> Vec<ProgressPhase> {
    reports(actions).into_iter().map(|r| r.0).collect()
}

fn directive(t: Target) -> Event {
    Event::Directive {
        assignment: Some(t),
        next_poll_seconds: 60,
    }
}

fn to_installing(t: Target) -> Vec<Event> {
    vec![
        directive(t),
        Event::Preconditions(Ok(())),
        Event::DownloadFinished,
    ]
}

#[test]
fn a_delta_update_walks_every_phase_to_committed_with_growing_sequences() {
    let start = factory();
    let mut events = to_installing(target("dep-1", start.installed().as_ref()));
    events.extend([
        Event::InstallFinished,
        Event::Armed,
        Event::Started {
            boot: boot(SlotName::B, SlotName::A, Some(SlotName::B)),
        },
        Event::HealthPassed,
        Event::Committed,
    ]);
    let (end, actions) = run(&start, events);
    use ProgressPhase::*;
    assert_eq!(
        phases(&actions),
        vec![
            Downloading,
            Downloaded,
            Verified,
            Installing,
            Installed,
            Rebooting,
            HealthCheck,
            Committed
        ],
        "every phase is reported once, in order"
    );
    let sequences: Vec<u64> = reports(&actions).iter().map(|r| r.1).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "sequences must grow: {sequences:?}"
    );
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Download { payload, .. } if payload.kind == PayloadKind::Delta
    )));
    assert!(actions.contains(&Action::Commit {
        slot: SlotName::B,
        security_version: 2
    }));
    assert_eq!(end.phase, Phase::Idle);
    assert_eq!(end.active, SlotName::B, "the new slot is committed");
    assert_eq!(end.installed().as_ref().map(|i| i.sha256), Some(digest(2)));
    assert_eq!(end.last_committed.as_deref(), Some("dep-1"));
}

#[test]
fn the_full_image_is_used_when_the_delta_source_is_not_the_active_slot() {
    let other = image(7, "0.9.0");
    let (_, actions) = run(
        &factory(),
        vec![
            directive(target("dep-1", Some(&other))),
            Event::Preconditions(Ok(())),
        ],
    );
    let payload = actions.iter().find_map(|a| match a {
        Action::Download { payload, .. } => Some(payload.clone()),
        _ => None,
    });
    assert_eq!(
        payload.map(|p| (p.kind, p.length, p.sha256)),
        Some((PayloadKind::Full, 1002, digest(2)))
    );
}

#[test]
fn a_failed_health_check_falls_back_and_reports_rolled_back() {
    let start = factory();
    let mut events = to_installing(target("dep-1", None));
    events.extend([
        Event::InstallFinished,
        Event::Armed,
        Event::Started {
            boot: boot(SlotName::B, SlotName::A, Some(SlotName::B)),
        },
        Event::HealthFailed {
            reason: "exit 1".to_owned(),
        },
    ]);
    let (mid, actions) = run(&start, events);
    assert!(actions.contains(&Action::AbandonAndReboot));
    assert!(matches!(mid.phase, Phase::RollingBack { .. }));
    let (end, actions) = step(
        &mid,
        Event::Started {
            boot: boot(SlotName::A, SlotName::A, None),
        },
        at(500),
    );
    let last = reports(&actions).pop().expect("a final report");
    assert_eq!(last.0, ProgressPhase::RolledBack);
    assert_eq!(last.2.as_deref(), Some("health_check_failed:exit 1"));
    assert_eq!(end.active, SlotName::A, "the old slot stays active");
    assert_eq!(end.phase, Phase::Idle);
}

#[test]
fn a_new_slot_that_never_confirms_is_reported_rolled_back_after_the_counter_falls_back() {
    let mut events = to_installing(target("dep-1", None));
    events.extend([Event::InstallFinished, Event::Armed]);
    let (mid, _) = run(&factory(), events);
    assert_eq!(mid.phase, Phase::Rebooting);
    // Armed but not yet rebooted: reboot again rather than give up.
    let (_, actions) = step(
        &mid,
        Event::Started {
            boot: boot(SlotName::A, SlotName::A, Some(SlotName::B)),
        },
        at(100),
    );
    assert!(actions.contains(&Action::Reboot));
    // The boot counter ran out: the firmware is back on A with no try armed.
    let (end, actions) = step(
        &mid,
        Event::Started {
            boot: boot(SlotName::A, SlotName::A, None),
        },
        at(100),
    );
    assert_eq!(
        reports(&actions).pop().map(|r| (r.0, r.2)),
        Some((ProgressPhase::RolledBack, Some("boot_failed".to_owned())))
    );
    assert_eq!(end.active, SlotName::A);
}

#[test]
fn cancel_stops_a_deployment_before_installing_but_not_after() {
    let (downloading, _) = run(
        &factory(),
        vec![
            directive(target("dep-1", None)),
            Event::Preconditions(Ok(())),
        ],
    );
    let cancel = Event::Control {
        command: ControlCommand::Cancel,
        deployment_id: Some("dep-1".to_owned()),
    };
    let (end, actions) = step(&downloading, cancel.clone(), at(50));
    assert!(actions.contains(&Action::StopDownload));
    assert_eq!(
        reports(&actions).pop().map(|r| (r.0, r.2)),
        Some((ProgressPhase::Failed, Some("cancelled".to_owned())))
    );
    assert_eq!(end.phase, Phase::Idle);

    let (installing, _) = run(&factory(), to_installing(target("dep-1", None)));
    let (still, actions) = step(&installing, cancel, at(50));
    assert_eq!(
        still, installing,
        "cancel after installing began changes nothing"
    );
    assert!(actions.is_empty());
}

#[test]
fn a_resent_directive_does_not_restart_a_deployment_until_the_server_retries_it() {
    let (downloading, _) = run(
        &factory(),
        vec![
            directive(target("dep-1", None)),
            Event::Preconditions(Ok(())),
        ],
    );
    let (same, actions) = step(&downloading, directive(target("dep-1", None)), at(30));
    assert_eq!(same.deployment, downloading.deployment);
    assert!(!actions.iter().any(|a| matches!(a, Action::Report(_))));

    let (failed, _) = step(
        &downloading,
        Event::DownloadFailed {
            reason: "digest".to_owned(),
            retryable: false,
        },
        at(40),
    );
    let last_sequence = failed.finished[0].next_sequence;
    // Resent before the server heard of the failure: ignored.
    let (ignored, _) = step(&failed, directive(target("dep-1", None)), at(50));
    assert!(ignored.deployment.is_none());
    // Absent once, then assigned again: the server's retry, with growing sequences.
    let (absent, _) = step(
        &ignored,
        Event::Directive {
            assignment: None,
            next_poll_seconds: 60,
        },
        at(60),
    );
    let (retried, _) = step(&absent, directive(target("dep-1", None)), at(70));
    assert_eq!(
        retried.deployment.as_ref().map(|d| d.next_sequence),
        Some(last_sequence)
    );
}

#[test]
fn a_rolled_back_deployment_is_never_installed_again_from_a_resent_directive() {
    let mut events = to_installing(target("dep-1", None));
    events.extend([
        Event::InstallFinished,
        Event::Armed,
        Event::Started {
            boot: boot(SlotName::B, SlotName::A, Some(SlotName::B)),
        },
        Event::HealthFailed {
            reason: "exit 1".to_owned(),
        },
        Event::Started {
            boot: boot(SlotName::A, SlotName::A, None),
        },
        Event::Directive {
            assignment: None,
            next_poll_seconds: 60,
        },
        directive(target("dep-1", None)),
    ]);
    let (end, actions) = run(&factory(), events);
    assert_eq!(
        end.phase,
        Phase::Idle,
        "the rolled-back image is not fetched again"
    );
    assert!(end.deployment.is_none());
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Download { .. }))
            .count(),
        1,
        "only the first attempt downloaded"
    );
}

#[test]
fn unmet_preconditions_wait_report_the_condition_and_recheck() {
    let (waiting, actions) = run(
        &factory(),
        vec![
            directive(target("dep-1", None)),
            Event::Preconditions(Err("parked".to_owned())),
        ],
    );
    assert_eq!(
        waiting.phase,
        Phase::Waiting {
            unmet: "parked".to_owned()
        }
    );
    assert_eq!(waiting.phase.name(), "waiting:parked");
    assert!(actions.contains(&Action::CheckIn));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::CheckPreconditions { after_seconds, .. } if *after_seconds == PRECONDITION_RECHECK_SECONDS
    )));
    assert!(!actions.iter().any(|a| matches!(a, Action::Download { .. })));
}

#[test]
fn a_server_rollback_of_a_committed_update_switches_back_and_reports_it() {
    let start = factory();
    let mut events = to_installing(target("dep-1", None));
    events.extend([
        Event::InstallFinished,
        Event::Armed,
        Event::Started {
            boot: boot(SlotName::B, SlotName::A, Some(SlotName::B)),
        },
        Event::HealthPassed,
        Event::Committed,
        Event::Control {
            command: ControlCommand::Rollback,
            deployment_id: Some("dep-1".to_owned()),
        },
    ]);
    let (switching, actions) = run(&start, events);
    let committed_sequence = reports(&actions).last().unwrap().1;
    assert!(actions.contains(&Action::ActivateAndReboot { slot: SlotName::A }));
    let (end, actions) = step(
        &switching,
        Event::Started {
            boot: boot(SlotName::A, SlotName::A, None),
        },
        at(900),
    );
    let last = reports(&actions).pop().unwrap();
    assert_eq!(last.0, ProgressPhase::RolledBack);
    assert!(last.1 > committed_sequence, "the rollback event is newer");
    assert_eq!(end.active, SlotName::A);
    assert_eq!(end.installed().as_ref().map(|i| i.sha256), Some(digest(1)));
}

#[test]
fn a_retryable_download_failure_retries_with_backoff_then_fails() {
    let (mut state, _) = run(
        &factory(),
        vec![
            directive(target("dep-1", None)),
            Event::Preconditions(Ok(())),
        ],
    );
    for attempt in 1..MAX_DOWNLOAD_ATTEMPTS {
        let (next, actions) = step(
            &state,
            Event::DownloadFailed {
                reason: "truncated".to_owned(),
                retryable: true,
            },
            at(100),
        );
        assert!(actions.contains(&Action::Download {
            payload: next.deployment.as_ref().unwrap().payload.clone(),
            after_seconds: download_backoff_seconds(attempt),
        }));
        state = next;
    }
    let (end, actions) = step(
        &state,
        Event::DownloadFailed {
            reason: "truncated".to_owned(),
            retryable: true,
        },
        at(200),
    );
    assert_eq!(end.phase, Phase::Idle);
    assert_eq!(reports(&actions).pop().unwrap().0, ProgressPhase::Failed);
}

fn any_event() -> impl Strategy<Value = Event> {
    let slot = prop_oneof![Just(SlotName::A), Just(SlotName::B)];
    let trying = prop_oneof![Just(None), Just(Some(SlotName::A)), Just(Some(SlotName::B))];
    prop_oneof![
        (slot.clone(), slot, trying).prop_map(|(booted, active, trying)| Event::Started {
            boot: boot(booted, active, trying)
        }),
        Just(Event::CheckInDue),
        (0u8..3).prop_map(|n| Event::Directive {
            assignment: (n > 0).then(|| target(&format!("dep-{n}"), Some(&image(1, "1.0.0")))),
            next_poll_seconds: 30,
        }),
        Just(Event::Preconditions(Ok(()))),
        Just(Event::Preconditions(Err("parked".to_owned()))),
        (0u64..2000).prop_map(|bytes_done| Event::DownloadProgress { bytes_done }),
        Just(Event::DownloadFinished),
        any::<bool>().prop_map(|retryable| Event::DownloadFailed {
            reason: "x".to_owned(),
            retryable
        }),
        Just(Event::InstallFinished),
        Just(Event::InstallFailed {
            reason: "x".to_owned()
        }),
        Just(Event::Armed),
        Just(Event::HealthPassed),
        Just(Event::HealthFailed {
            reason: "x".to_owned()
        }),
        Just(Event::Committed),
        prop_oneof![
            Just(ControlCommand::Cancel),
            Just(ControlCommand::Rollback),
            Just(ControlCommand::PollNow)
        ]
        .prop_map(|command| Event::Control {
            command,
            deployment_id: None
        }),
        Just(Event::ActionFailed {
            reason: "x".to_owned()
        }),
    ]
}

proptest! {
    /// Whatever happens, the committed slot holds a known image, the slot being
    /// written is never the committed one, and each deployment's sequence numbers grow.
    #[test]
    fn the_committed_slot_stays_bootable_and_sequences_grow(
        events in proptest::collection::vec(any_event(), 1..60)
    ) {
        let mut state = factory();
        let mut last_sequence: std::collections::BTreeMap<String, u64> = Default::default();
        for (i, event) in events.into_iter().enumerate() {
            let (next, actions) = step(&state, event, at(i as i64));
            prop_assert!(next.installed().is_some(), "committed slot {:?} lost its image", next.active);
            if let Some(d) = &next.deployment {
                prop_assert_ne!(d.to, d.from);
                if next.phase.has_touched_slot() && !matches!(next.phase, Phase::SwitchingBack { .. }) {
                    prop_assert_eq!(d.from, next.active, "a deployment never writes the committed slot");
                }
            }
            for action in &actions {
                if let Action::Report(r) = action {
                    let previous = last_sequence.insert(r.deployment_id.clone(), r.sequence);
                    prop_assert!(previous.is_none_or(|p| p < r.sequence),
                        "sequence of {} went from {:?} to {}", r.deployment_id, previous, r.sequence);
                }
                if let Action::Install { to, .. } = action {
                    prop_assert_ne!(*to, next.active, "never install over the committed slot");
                }
            }
            state = next;
        }
    }
}
