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
fn a_delta_for_another_base_installs_the_full_image_without_a_base() {
    // The director offers a delta from an image this vehicle does not run: the full
    // image is downloaded and installed, and no delta base is passed on.
    let start = factory();
    let other = image(7, "0.9.0");
    let (_, actions) = run(&start, to_installing(target("dep-1", Some(&other))));
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Install { payload, base: None, .. } if payload.kind == PayloadKind::Full
        )),
        "{actions:?}"
    );
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
    // The delta is checked against the base the signed delta entry names (its
    // container may carry no digests of its own).
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Install { payload, base: Some(base), .. }
            if payload.kind == PayloadKind::Delta && *base == digest(1)
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

/// Every report, whole (the helpers above keep only phase, sequence and reason).
fn full_reports(actions: &[Action]) -> Vec<Report> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Report(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn downloading() -> AgentState {
    run(
        &factory(),
        vec![
            directive(target("dep-1", None)),
            Event::Preconditions(Ok(())),
        ],
    )
    .0
}

fn after(state: &AgentState, events: Vec<Event>) -> AgentState {
    run(state, events).0
}

fn control(command: ControlCommand, deployment_id: &str) -> Event {
    Event::Control {
        command,
        deployment_id: Some(deployment_id.to_owned()),
    }
}

#[test]
fn each_phase_has_its_step_name_and_reports_it_in_check_ins() {
    let cases = [
        (Phase::Idle, "idle"),
        (
            Phase::Waiting {
                unmet: "parked".to_owned(),
            },
            "waiting",
        ),
        (Phase::Downloading, "downloading"),
        (Phase::Installing, "installing"),
        (Phase::Installed, "installed"),
        (Phase::Rebooting, "rebooting"),
        (Phase::HealthCheck, "health_check"),
        (Phase::Committing, "committing"),
        (
            Phase::RollingBack {
                reason: "x".to_owned(),
            },
            "rolling_back",
        ),
        (
            Phase::SwitchingBack {
                to: SlotName::A,
                deployment_id: None,
            },
            "switching_back",
        ),
    ];
    for (phase, step_name) in cases {
        assert_eq!(phase.step_name(), step_name);
        if !matches!(phase, Phase::Waiting { .. }) {
            assert_eq!(
                phase.name(),
                step_name,
                "only waiting adds the unmet condition"
            );
        }
    }
}

#[test]
fn download_backoff_doubles_from_2_seconds_and_caps_at_60() {
    let backoff: Vec<u32> = (1..=8).map(download_backoff_seconds).collect();
    assert_eq!(backoff, vec![2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(download_backoff_seconds(u32::MAX), 60);
}

#[test]
fn the_delta_is_chosen_only_when_both_source_digest_and_length_match_the_active_image() {
    let active = image(1, "1.0.0");
    let delta = target("dep-1", Some(&active));
    let kind = |t: &Target, a: &SlotImage| choose_payload(t, a).kind;
    assert_eq!(kind(&delta, &Some(active.clone())), PayloadKind::Delta);
    let same_digest_other_length = InstalledImage {
        length: active.length + 1,
        ..active.clone()
    };
    assert_eq!(
        kind(&delta, &Some(same_digest_other_length)),
        PayloadKind::Full
    );
    let same_length_other_digest = InstalledImage {
        sha256: digest(7),
        ..active.clone()
    };
    assert_eq!(
        kind(&delta, &Some(same_length_other_digest)),
        PayloadKind::Full
    );
    assert_eq!(
        kind(&delta, &None),
        PayloadKind::Full,
        "no known source image"
    );
    assert_eq!(
        kind(&target("dep-1", None), &Some(active)),
        PayloadKind::Full,
        "no delta offered"
    );
}

#[test]
fn a_directive_for_the_image_already_running_starts_no_deployment() {
    let running = image(1, "1.0.0");
    let mut same = target("dep-1", None);
    same.sha256 = running.sha256;
    same.length = running.length;
    let (end, actions) = step(&factory(), directive(same.clone()), at(0));
    assert_eq!(end.phase, Phase::Idle);
    assert!(end.deployment.is_none());
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::CheckPreconditions { .. })));

    // The same digest with another length, or the same length with another digest, is
    // another image: it is deployed.
    let mut other_length = same.clone();
    other_length.length += 1;
    let mut other_digest = same;
    other_digest.sha256 = digest(7);
    for t in [other_length, other_digest] {
        let (end, _) = step(&factory(), directive(t), at(0));
        assert!(matches!(end.phase, Phase::Waiting { .. }));
        assert!(end.deployment.is_some());
    }
}

#[test]
fn byte_progress_is_reported_at_most_every_2_seconds_as_a_droppable_update() {
    let start = downloading();
    let progress = |bytes_done| Event::DownloadProgress { bytes_done };
    let (first, actions) = step(&start, progress(100), at(0));
    let sent = full_reports(&actions);
    assert_eq!(sent.len(), 1, "the first byte count is due");
    assert_eq!(
        (
            sent[0].phase,
            sent[0].bytes_done,
            sent[0].bytes_total,
            sent[0].transition
        ),
        (ProgressPhase::Downloading, 100, 1002, false)
    );
    let d = first.deployment.as_ref().unwrap();
    assert_eq!(
        (d.bytes_done, d.last_byte_report),
        (100, at(0).unix_seconds())
    );

    // One second later: the count is kept, not sent.
    let (second, actions) = step(&first, progress(200), at(1));
    assert!(full_reports(&actions).is_empty());
    let d = second.deployment.as_ref().unwrap();
    assert_eq!(
        (d.bytes_done, d.last_byte_report),
        (200, at(0).unix_seconds())
    );

    // Exactly two seconds after the last report: due again.
    let (_, actions) = step(&second, progress(300), at(2));
    assert_eq!(
        full_reports(&actions)
            .iter()
            .map(|r| r.bytes_done)
            .collect::<Vec<_>>(),
        vec![300]
    );

    // Progress outside downloading changes nothing.
    let installing = after(&start, vec![Event::DownloadFinished]);
    let (same, actions) = step(&installing, progress(5), at(100));
    assert_eq!(same, installing);
    assert!(actions.is_empty());
}

#[test]
fn downloading_and_failure_reports_carry_the_bytes_done_and_the_others_the_total() {
    let (start, actions) = run(
        &factory(),
        vec![
            directive(target("dep-1", None)),
            Event::Preconditions(Ok(())),
        ],
    );
    let first = full_reports(&actions);
    assert_eq!(
        first
            .iter()
            .map(|r| (r.phase, r.bytes_done, r.transition))
            .collect::<Vec<_>>(),
        vec![(ProgressPhase::Downloading, 0, true)]
    );
    let (_, actions) = run(
        &start,
        vec![
            Event::DownloadProgress { bytes_done: 500 },
            Event::DownloadFailed {
                reason: "digest".to_owned(),
                retryable: false,
            },
        ],
    );
    let failed = full_reports(&actions).pop().unwrap();
    assert_eq!(
        (failed.phase, failed.bytes_done, failed.bytes_total),
        (ProgressPhase::Failed, 500, 1002)
    );

    let (_, actions) = step(&start, Event::DownloadFinished, at(10));
    assert!(full_reports(&actions)
        .iter()
        .all(|r| r.bytes_done == 1002 && r.bytes_total == 1002 && r.transition));
}

#[test]
fn a_finished_download_installs_the_target_into_the_inactive_slot_also_after_a_restart() {
    let start = downloading();
    let install = Action::Install {
        payload: start.deployment.as_ref().unwrap().payload.clone(),
        from: SlotName::A,
        to: SlotName::B,
        length: 1002,
        sha256: digest(2),
        base: None,
    };
    let (installing, actions) = step(&start, Event::DownloadFinished, at(10));
    assert!(actions.contains(&install));
    let (_, actions) = step(
        &installing,
        Event::Started {
            boot: boot(SlotName::A, SlotName::A, None),
        },
        at(20),
    );
    assert!(
        actions.contains(&install),
        "a half-written slot is written again"
    );
}

#[test]
fn a_failed_install_forgets_what_the_slot_held_and_reports_install_failed() {
    let mut start = factory();
    start.slot_b = Some(image(5, "0.5.0"));
    let installing = after(&start, to_installing(target("dep-1", None)));
    let failed = Event::InstallFailed {
        reason: "write".to_owned(),
    };
    let (end, actions) = step(&installing, failed.clone(), at(100));
    assert_eq!(
        end.slot_b, None,
        "the half-written slot holds no known image"
    );
    assert_eq!(end.phase, Phase::Idle);
    assert_eq!(
        reports(&actions).pop().map(|r| (r.0, r.2)),
        Some((
            ProgressPhase::Failed,
            Some("install_failed:write".to_owned())
        ))
    );
    // Outside installing, an install failure changes nothing.
    let downloading = after(
        &start,
        vec![
            directive(target("dep-1", None)),
            Event::Preconditions(Ok(())),
        ],
    );
    let (same, actions) = step(&downloading, failed, at(100));
    assert_eq!(same, downloading);
    assert!(actions.is_empty());
}

#[test]
fn the_finished_memory_keeps_the_last_16_deployments_once_each() {
    let entry = |n: usize| Finished {
        deployment_id: format!("dep-{n}"),
        outcome: ProgressPhase::Failed,
        next_sequence: n as u64,
        absent_since: false,
        via: None,
    };
    let mut finished = Vec::new();
    for n in 0..16 {
        remember(&mut finished, entry(n));
    }
    assert_eq!(finished.len(), 16, "16 are kept");
    remember(&mut finished, entry(16));
    let ids: Vec<String> = finished.iter().map(|f| f.deployment_id.clone()).collect();
    let expected: Vec<String> = (1..=16).map(|n| format!("dep-{n}")).collect();
    assert_eq!(ids, expected, "the oldest is forgotten first");
    remember(&mut finished, entry(5));
    assert_eq!(finished.len(), 16);
    assert_eq!(
        finished
            .iter()
            .filter(|f| f.deployment_id == "dep-5")
            .count(),
        1,
        "a deployment is remembered once, with its latest end"
    );
    assert_eq!(
        finished.last().map(|f| f.deployment_id.as_str()),
        Some("dep-5")
    );
    assert_eq!(finished[0].deployment_id, "dep-1");
}

#[test]
fn the_agent_follows_a_bootloader_switched_behind_its_back_only_to_a_known_image() {
    let mut both = factory();
    both.slot_b = Some(image(2, "2.0.0"));
    let switched = Event::Started {
        boot: boot(SlotName::B, SlotName::B, None),
    };
    let (end, _) = step(&both, switched.clone(), at(0));
    assert_eq!(end.active, SlotName::B);
    // Slot B holds nothing known: the agent keeps A as its committed slot.
    let (end, _) = step(&factory(), switched, at(0));
    assert_eq!(end.active, SlotName::A);
}

fn committed() -> (AgentState, u64) {
    let mut events = to_installing(target("dep-1", None));
    events.extend([
        Event::InstallFinished,
        Event::Armed,
        Event::Started {
            boot: boot(SlotName::B, SlotName::A, Some(SlotName::B)),
        },
        Event::HealthPassed,
        Event::Committed,
    ]);
    let (state, actions) = run(&factory(), events);
    (state, reports(&actions).last().unwrap().1)
}

#[test]
fn a_server_rollback_report_continues_the_deployments_sequence_and_clears_last_committed() {
    let (committed, committed_sequence) = committed();
    let switching = after(&committed, vec![control(ControlCommand::Rollback, "dep-1")]);
    let (end, actions) = step(
        &switching,
        Event::Started {
            boot: boot(SlotName::A, SlotName::A, None),
        },
        at(900),
    );
    let last = reports(&actions).pop().unwrap();
    assert_eq!(
        last,
        (
            ProgressPhase::RolledBack,
            committed_sequence + 1,
            Some("server_rollback".to_owned())
        )
    );
    assert_eq!(
        end.last_committed, None,
        "slot A's image came from no known deployment"
    );
    let remembered = end
        .finished
        .iter()
        .find(|f| f.deployment_id == "dep-1")
        .unwrap();
    assert_eq!(
        (remembered.outcome, remembered.next_sequence),
        (ProgressPhase::RolledBack, committed_sequence + 2)
    );
}

#[test]
fn a_server_rollback_in_idle_needs_the_last_committed_deployment_and_an_image_to_go_back_to() {
    let (committed, _) = committed();
    let (same, actions) = step(
        &committed,
        control(ControlCommand::Rollback, "dep-0"),
        at(0),
    );
    assert_eq!(
        same, committed,
        "not the deployment the active slot came from"
    );
    assert!(actions.is_empty());
    let (same, actions) = step(
        &factory(),
        Event::Control {
            command: ControlCommand::Rollback,
            deployment_id: None,
        },
        at(0),
    );
    assert_eq!(same, factory(), "slot B holds nothing to go back to");
    assert!(actions.is_empty());
}

#[test]
fn cancel_without_a_deployment_changes_nothing() {
    let cancel = Event::Control {
        command: ControlCommand::Cancel,
        deployment_id: None,
    };
    let (same, actions) = step(&factory(), cancel, at(0));
    assert_eq!(same, factory());
    assert!(actions.is_empty());
}

#[test]
fn a_server_rollback_of_a_download_cancels_it_and_one_naming_another_deployment_is_ignored() {
    let start = downloading();
    let (end, actions) = step(&start, control(ControlCommand::Rollback, "dep-1"), at(50));
    assert!(actions.contains(&Action::StopDownload));
    assert_eq!(
        reports(&actions).pop().map(|r| (r.0, r.2)),
        Some((ProgressPhase::Failed, Some("cancelled".to_owned())))
    );
    assert_eq!(end.phase, Phase::Idle);
    let (same, actions) = step(&start, control(ControlCommand::Rollback, "dep-0"), at(50));
    assert_eq!(same, start);
    assert!(actions.is_empty());
}

#[test]
fn a_server_rollback_of_an_install_not_yet_booted_forgets_the_slot_and_reports_rolled_back() {
    let installed = after(
        &downloading(),
        vec![Event::DownloadFinished, Event::InstallFinished],
    );
    assert_eq!(installed.phase, Phase::Installed);
    assert!(installed.slot_b.is_some());
    let (end, actions) = step(
        &installed,
        control(ControlCommand::Rollback, "dep-1"),
        at(50),
    );
    assert_eq!(end.slot_b, None);
    assert_eq!(end.active, SlotName::A);
    assert_eq!(end.phase, Phase::Idle);
    assert_eq!(
        reports(&actions).pop().map(|r| (r.0, r.2)),
        Some((
            ProgressPhase::RolledBack,
            Some("server_rollback".to_owned())
        ))
    );
    let (same, actions) = step(
        &installed,
        control(ControlCommand::Rollback, "dep-0"),
        at(50),
    );
    assert_eq!(same, installed);
    assert!(actions.is_empty());
}

#[test]
fn a_server_rollback_after_the_reboot_falls_back_to_the_old_slot() {
    let health_check = after(
        &downloading(),
        vec![
            Event::DownloadFinished,
            Event::InstallFinished,
            Event::Armed,
            Event::Started {
                boot: boot(SlotName::B, SlotName::A, Some(SlotName::B)),
            },
        ],
    );
    assert_eq!(health_check.phase, Phase::HealthCheck);
    let (end, actions) = step(
        &health_check,
        control(ControlCommand::Rollback, "dep-1"),
        at(50),
    );
    assert_eq!(
        end.phase,
        Phase::RollingBack {
            reason: "server_rollback".to_owned()
        }
    );
    assert_eq!(actions, vec![Action::AbandonAndReboot]);
    let (same, actions) = step(
        &health_check,
        control(ControlCommand::Rollback, "dep-0"),
        at(50),
    );
    assert_eq!(same, health_check);
    assert!(actions.is_empty());
}

#[test]
fn an_action_failure_fails_a_deployment_before_the_reboot_and_falls_back_after_it() {
    let failure = Event::ActionFailed {
        reason: "arm".to_owned(),
    };
    let installed = after(
        &downloading(),
        vec![Event::DownloadFinished, Event::InstallFinished],
    );
    let (end, actions) = step(&installed, failure.clone(), at(50));
    assert_eq!(end.phase, Phase::Idle);
    assert_eq!(end.slot_b, None, "the written slot is not trusted");
    assert_eq!(
        reports(&actions).pop().map(|r| (r.0, r.2)),
        Some((ProgressPhase::Failed, Some("agent_error:arm".to_owned())))
    );

    let rebooting = after(&installed, vec![Event::Armed]);
    let (end, actions) = step(&rebooting, failure.clone(), at(50));
    assert_eq!(
        end.phase,
        Phase::RollingBack {
            reason: "agent_error:arm".to_owned()
        }
    );
    assert_eq!(actions, vec![Action::AbandonAndReboot]);

    let (same, actions) = step(&factory(), failure, at(50));
    assert_eq!(same, factory());
    assert!(actions.is_empty());
}
