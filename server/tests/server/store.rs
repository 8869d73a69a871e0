//! The store suite, run against SQLite and PostgreSQL (a fresh database per test).

use crate::both_backends;
use crate::helpers::{checkin, device_key, fresh_store, Backend};
use ota_core::encoding::Sha256Digest;
use ota_server::director::{DeploymentStatus, NewDeployment};
use ota_server::engine::plan::{plan, Facts, RolloutRequest};
use ota_server::rollout::{RolloutAction, RolloutSpec, RolloutState};
use ota_server::store::{
    now_ms, Actor, BuiltDelta, ChangeError, DeltaJobStatus, NewImage, NewRelease, NewRollout,
    NewVehicle, StoreError, VehicleFilter, COMPACT_ABOVE,
};

fn actor() -> Actor {
    Actor {
        name: "store-test".to_owned(),
        request_id: Some("req-1".to_owned()),
    }
}

fn image(hw: &str, version: &str) -> NewImage {
    NewImage {
        name: format!("{hw}-{version}"),
        hardware_id: hw.to_owned(),
        version: version.to_owned(),
        length: 10,
        sha256: Sha256Digest::of(format!("{hw}{version}").as_bytes()).to_hex(),
    }
}

async fn images_and_audit(backend: Backend) {
    let Some((store, db, _dir)) = fresh_store(backend).await else {
        return;
    };
    let first = store
        .insert_image(&actor(), image("hw-a", "1.0"))
        .await
        .unwrap();
    assert_eq!(store.get_image(&first.id).await.unwrap(), first);
    let err = store
        .insert_image(&actor(), image("hw-a", "1.0"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "a duplicate (hardware id, version) must conflict: {err:?}"
    );
    store
        .insert_image(&actor(), image("hw-b", "1.0"))
        .await
        .unwrap();
    assert_eq!(store.list_images(Some("hw-b"), 100).await.unwrap().len(), 1);
    assert_eq!(store.list_images(None, 100).await.unwrap().len(), 2);
    assert!(matches!(
        store.get_image("img_0000000000000000").await,
        Err(StoreError::NotFound { .. })
    ));
    let audit = store.list_audit(10, None).await.unwrap();
    assert_eq!(
        audit.len(),
        2,
        "the refused duplicate must leave no audit entry (same transaction)"
    );
    assert_eq!(audit[0].action, "image.upload");
    assert_eq!(audit[0].request_id.as_deref(), Some("req-1"));
    if let Some(db) = db {
        db.drop_now().await;
    }
}
both_backends!(images_and_audit_in_one_transaction, images_and_audit);

/// The actor whose audit entries the test database refuses.
const AUDIT_REFUSED: &str = "audit-refused";

/// Makes the store's database refuse every audit entry of [`AUDIT_REFUSED`]: a trigger
/// on SQLite, a CHECK constraint on PostgreSQL, both created in this test's own database.
async fn refuse_audit_entries(url: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url)
        .await
        .expect("a second connection to the test database");
    let ddl = if url.starts_with("sqlite:") {
        format!(
            "CREATE TRIGGER audit_refused BEFORE INSERT ON audit_log \
             WHEN NEW.actor = '{AUDIT_REFUSED}' \
             BEGIN SELECT RAISE(ABORT, 'audit entry refused by the test'); END"
        )
    } else {
        format!(
            "ALTER TABLE audit_log ADD CONSTRAINT audit_refused CHECK (actor <> '{AUDIT_REFUSED}')"
        )
    };
    sqlx::query(&ddl)
        .execute(&mut conn)
        .await
        .expect("installing the audit refusal");
    conn.close().await.ok();
}

async fn failing_audit_rolls_back(backend: Backend) {
    let Some((store, db, dir)) = fresh_store(backend).await else {
        return;
    };
    let url = match &db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", dir.path().join("ota.db").display()),
    };
    refuse_audit_entries(&url).await;
    let refused = Actor {
        name: AUDIT_REFUSED.to_owned(),
        request_id: None,
    };
    let key = device_key();
    let vehicle = |id: &str| NewVehicle {
        id: id.into(),
        public_key: key.public_key().to_hex(),
        tags: vec!["eu".into()],
        ecus: vec![("main".into(), "hw-a".into())],
    };
    let scopes = vec!["admin".to_owned()];

    // Every write's change row goes in first and its audit entry second, so a refused
    // audit entry can only be undone by rolling the transaction back.
    let errors = [
        (
            "image upload",
            store
                .insert_image(&refused, image("hw-a", "1.0"))
                .await
                .map(|_| ()),
        ),
        (
            "vehicle registration",
            store
                .insert_vehicle(&refused, vehicle("veh-1"))
                .await
                .map(|_| ()),
        ),
        (
            "bulk registration",
            store
                .insert_vehicles(&refused, &[vehicle("veh-2"), vehicle("veh-3")])
                .await
                .map(|_| ()),
        ),
        (
            "token creation",
            store
                .insert_token(&refused, "ci", "ab".repeat(32).as_str(), &scopes)
                .await
                .map(|_| ()),
        ),
    ];
    for (name, result) in errors {
        assert!(
            matches!(result, Err(StoreError::Database(_))),
            "{name}: a refused audit entry must fail the write with a database error, got {result:?}"
        );
    }
    assert!(
        store.list_images(None, 1000).await.unwrap().is_empty(),
        "the image of a failed audit was persisted"
    );
    for id in ["veh-1", "veh-2", "veh-3"] {
        assert!(
            matches!(
                store.get_vehicle(id).await,
                Err(StoreError::NotFound { .. })
            ),
            "vehicle {id} of a failed audit was persisted"
        );
    }
    assert!(
        store.find_token(&"ab".repeat(32)).await.unwrap().is_none(),
        "the token of a failed audit was persisted"
    );
    assert!(store.list_audit(10, None).await.unwrap().is_empty());

    // The same writes by another actor then succeed: nothing half-written blocks them
    // (a committed image or vehicle would now conflict).
    store
        .insert_image(&actor(), image("hw-a", "1.0"))
        .await
        .expect("the image after the refused one");
    store
        .insert_vehicle(&actor(), vehicle("veh-1"))
        .await
        .expect("the vehicle after the refused one");
    store
        .insert_vehicles(&actor(), &[vehicle("veh-2"), vehicle("veh-3")])
        .await
        .expect("the bulk registration after the refused one");
    store
        .insert_token(&actor(), "ci", "ab".repeat(32).as_str(), &scopes)
        .await
        .expect("the token after the refused one");
    assert_eq!(store.list_audit(10, None).await.unwrap().len(), 4);
    if let Some(db) = db {
        db.drop_now().await;
    }
}
both_backends!(
    a_failing_audit_write_rolls_the_change_back,
    failing_audit_rolls_back
);

async fn vehicles_checkins_and_director_versions(backend: Backend) {
    let Some((store, db, _dir)) = fresh_store(backend).await else {
        return;
    };
    let key = device_key();
    store
        .insert_vehicle(
            &actor(),
            NewVehicle {
                id: "veh-1".into(),
                public_key: key.public_key().to_hex(),
                tags: vec!["eu".into(), "beta".into()],
                ecus: vec![("main".into(), "hw-a".into())],
            },
        )
        .await
        .unwrap();
    store
        .insert_vehicle(
            &actor(),
            NewVehicle {
                id: "veh-2".into(),
                public_key: key.public_key().to_hex(),
                tags: vec![],
                ecus: vec![("main".into(), "hw-b".into())],
            },
        )
        .await
        .unwrap();
    let known = store.get_vehicle("veh-1").await.unwrap().ecus;
    let first = checkin("veh-1", Some(("1.0", b"old")), 0);
    assert_eq!(
        store
            .record_checkin(&first, &known, now_ms())
            .await
            .unwrap(),
        Some(1),
        "a fresh check-in is recorded and gets director version 1"
    );
    assert_eq!(
        store
            .record_checkin(&first, &known, now_ms())
            .await
            .unwrap(),
        None,
        "the same check-in again is a replay"
    );
    let mut older = checkin("veh-1", Some(("0.9", b"older")), 0);
    older.sent_at = first.sent_at.plus_seconds(-5);
    assert_eq!(
        store
            .record_checkin(&older, &known, now_ms())
            .await
            .unwrap(),
        None,
        "a check-in older than the newest accepted one is a replay"
    );
    let mut same_second = checkin("veh-1", Some(("1.0", b"old")), 0);
    same_second.sent_at = first.sent_at;
    assert_eq!(
        store
            .record_checkin(&same_second, &known, now_ms())
            .await
            .unwrap(),
        Some(2),
        "another nonce in the same second is a new check-in"
    );
    let v = store.get_vehicle("veh-1").await.unwrap();
    assert_eq!(v.ecus[0].installed_version.as_deref(), Some("1.0"));
    assert!(v.last_seen_at.is_some(), "a check-in must record last seen");
    let by_tag = store
        .list_vehicles(&VehicleFilter {
            tag: Some("beta".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_tag.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
        ["veh-1"]
    );
    let by_hw = store
        .list_vehicles(&VehicleFilter {
            hardware_id: Some("hw-b".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_hw.len(), 1);
    let by_version = store
        .list_vehicles(&VehicleFilter {
            installed_version: Some("1.0".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_version.len(), 1);
    let mut trusts_ten = checkin("veh-1", Some(("1.0", b"old")), 10);
    trusts_ten.sent_at = first.sent_at.plus_seconds(1);
    let known = store.get_vehicle("veh-1").await.unwrap().ecus;
    assert_eq!(
        store
            .record_checkin(&trusts_ten, &known, now_ms())
            .await
            .unwrap(),
        Some(11),
        "must sign above what the vehicle trusts"
    );
    assert!(matches!(
        store
            .record_checkin(&checkin("nobody", None, 0), &[], now_ms())
            .await,
        Err(StoreError::NotFound { .. })
    ));
    // One read gives a vehicle with all its ECUs in order, or with none, as listing
    // (a read per vehicle and one per vehicle's ECUs) does.
    for (id, ecus) in [
        ("veh-many", vec!["telematics", "body", "main"]),
        ("veh-none", vec![]),
    ] {
        store
            .insert_vehicle(
                &actor(),
                NewVehicle {
                    id: id.into(),
                    public_key: device_key().public_key().to_hex(),
                    tags: vec![],
                    ecus: ecus
                        .iter()
                        .map(|e| (e.to_string(), format!("hw-{e}")))
                        .collect(),
                },
            )
            .await
            .unwrap();
        let one = store.get_vehicle(id).await.unwrap();
        let mut expected: Vec<&str> = ecus.clone();
        expected.sort_unstable();
        assert_eq!(
            one.ecus.iter().map(|e| e.ecu.as_str()).collect::<Vec<_>>(),
            expected
        );
        assert!(one
            .ecus
            .iter()
            .all(|e| e.hardware_id == format!("hw-{}", e.ecu)));
        let listed = store
            .list_vehicles(&VehicleFilter::default())
            .await
            .unwrap()
            .into_iter()
            .find(|v| v.id == id)
            .unwrap();
        assert_eq!(format!("{one:?}"), format!("{listed:?}"));
    }
    if let Some(db) = db {
        db.drop_now().await;
    }
}
both_backends!(
    vehicles_checkins_and_director_versions_grow,
    vehicles_checkins_and_director_versions
);

async fn rollouts_deployments_and_jobs(backend: Backend) {
    let Some((store, db, _dir)) = fresh_store(backend).await else {
        return;
    };
    let img = store
        .insert_image(&actor(), image("hw-a", "2.0"))
        .await
        .unwrap();
    let release = store
        .insert_release(
            &actor(),
            NewRelease {
                name: "r1".into(),
                version: "2.0".into(),
                security_version: 2,
                targets_version: 1,
                targets_envelope: "{}".into(),
                signed_by: "server".into(),
                images: vec![("hw-a".into(), img.id.clone())],
            },
        )
        .await
        .unwrap();
    assert_eq!(release.images.len(), 1);
    assert_eq!(
        store.latest_targets().await.unwrap(),
        Some((1, "{}".to_owned())),
        "the newest targets are the release's"
    );
    let key = device_key();
    store
        .insert_vehicle(
            &actor(),
            NewVehicle {
                id: "veh-1".into(),
                public_key: key.public_key().to_hex(),
                tags: vec![],
                ecus: vec![("main".into(), "hw-a".into())],
            },
        )
        .await
        .unwrap();
    let spec: RolloutSpec = serde_json::from_value(
        serde_json::json!({ "phases": [{ "name": "all", "percent": 100 }] }),
    )
    .unwrap();
    let rollout = store
        .insert_rollout(
            &actor(),
            NewRollout {
                name: "ro".into(),
                release_id: release.id.clone(),
                spec,
                salt: "00ff".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(rollout.state, RolloutState::Draft);
    let start = plan(
        &rollout,
        &RolloutRequest::Operator(RolloutAction::Start),
        &Facts::default(),
        now_ms(),
    )
    .unwrap();
    let (started, cancelled) = store
        .apply_rollout_change(&actor(), &start, Some(r#"{"n":1}"#))
        .await
        .unwrap();
    assert_eq!(started.state, RolloutState::Running);
    assert!(cancelled.is_empty());
    // The same change again was planned from a state that no longer holds: refused,
    // with the rollout as it is now, and nothing written — its event neither.
    match store
        .apply_rollout_change(&actor(), &start, Some(r#"{"n":2}"#))
        .await
    {
        Err(ChangeError::Raced(latest)) => assert_eq!(latest.state, RolloutState::Running),
        other => panic!("a stale change must be refused: {other:?}"),
    }
    let outbox = store.outbox_batch(10).await.unwrap();
    assert_eq!(
        outbox
            .iter()
            .map(|row| (row.rollout_id.as_str(), row.event.as_str()))
            .collect::<Vec<_>>(),
        [(rollout.id.as_str(), r#"{"n":1}"#)],
        "the outbox holds the committed change's event and only that"
    );
    assert_eq!(store.outbox_published(&[outbox[0].id]).await.unwrap(), 1);
    assert_eq!(store.outbox_pending().await.unwrap(), 0);
    let audit = store.list_audit(100, None).await.unwrap();
    assert_eq!(
        audit.iter().filter(|a| a.action == "rollout.start").count(),
        1,
        "a refused change writes no audit line"
    );
    assert_eq!(store.active_rollouts().await.unwrap().len(), 1);

    let new = [NewDeployment {
        deployment_id: "dep_1".into(),
        ecu: "main".into(),
        from_sha256: None,
        retry: false,
    }];
    store
        .insert_deployments(&rollout.id, "veh-1", 0, &new, now_ms())
        .await
        .unwrap();
    store
        .insert_deployments(&rollout.id, "veh-1", 0, &new, now_ms())
        .await
        .unwrap();
    assert_eq!(
        store.deployments_for_vehicle("veh-1").await.unwrap().len(),
        1,
        "inserting twice is idempotent"
    );
    assert_eq!(
        store.vehicles_started_since(&rollout.id, 0).await.unwrap(),
        1
    );
    assert!(store
        .update_deployment(
            "dep_1",
            "veh-1",
            DeploymentStatus::Downloading,
            1,
            None,
            now_ms()
        )
        .await
        .unwrap());
    assert!(
        !store
            .update_deployment(
                "dep_1",
                "veh-1",
                DeploymentStatus::Assigned,
                1,
                None,
                now_ms()
            )
            .await
            .unwrap(),
        "a replayed sequence is ignored"
    );
    assert!(
        !store
            .update_deployment(
                "dep_1",
                "veh-2",
                DeploymentStatus::Failed,
                5,
                None,
                now_ms()
            )
            .await
            .unwrap(),
        "another vehicle cannot touch it"
    );
    assert!(store
        .update_deployment(
            "dep_1",
            "veh-1",
            DeploymentStatus::Failed,
            2,
            Some("hash"),
            now_ms()
        )
        .await
        .unwrap());
    let retry = [NewDeployment {
        deployment_id: "dep_1".into(),
        ecu: "main".into(),
        from_sha256: None,
        retry: true,
    }];
    store
        .insert_deployments(&rollout.id, "veh-1", 0, &retry, now_ms())
        .await
        .unwrap();
    let again = &store.deployments_for_vehicle("veh-1").await.unwrap()[0];
    assert_eq!(
        (again.status, again.attempts),
        (DeploymentStatus::Assigned, 2),
        "a retry reuses the deployment"
    );
    assert!(
        store
            .update_deployment(
                "dep_1",
                "veh-1",
                DeploymentStatus::Failed,
                1,
                Some("hash"),
                now_ms()
            )
            .await
            .unwrap(),
        "sequences restart per attempt"
    );
    let counts = store.phase_counts(&rollout.id).await.unwrap();
    assert_eq!(counts[&0].failed, 1);
    assert_eq!(
        store
            .supervision_aggregates(&rollout.id, started.window_start_ms, None)
            .await
            .unwrap()
            .window
            .failed,
        1
    );
    // An unfinished deployment assigned before the overdue line counts as timed out; a
    // finished one never does.
    let slow = [NewDeployment {
        deployment_id: "dep_slow".into(),
        ecu: "aux".into(),
        from_sha256: None,
        retry: false,
    }];
    let assigned_at = now_ms();
    store
        .insert_deployments(&rollout.id, "veh-1", 0, &slow, assigned_at)
        .await
        .unwrap();
    let overdue = store
        .supervision_aggregates(&rollout.id, started.window_start_ms, Some(assigned_at + 1))
        .await
        .unwrap()
        .window;
    assert_eq!((overdue.timed_out, overdue.failed), (1, 1));
    let in_time = store
        .supervision_aggregates(&rollout.id, started.window_start_ms, Some(assigned_at))
        .await
        .unwrap()
        .window;
    assert_eq!(in_time.timed_out, 0);

    let (aa, bb, cc) = (
        Sha256Digest::of(b"source"),
        Sha256Digest::of(b"target"),
        Sha256Digest::of(b"delta"),
    );
    assert!(store
        .enqueue_delta(&rollout.id, "hw-a", &aa.to_hex(), &bb.to_hex())
        .await
        .unwrap());
    assert!(
        !store
            .enqueue_delta(&rollout.id, "hw-a", &aa.to_hex(), &bb.to_hex())
            .await
            .unwrap(),
        "one job per (source, target)"
    );
    let job = store
        .claim_delta_job()
        .await
        .unwrap()
        .expect("a queued job");
    assert_eq!(job.status, DeltaJobStatus::Running);
    assert!(
        store.claim_delta_job().await.unwrap().is_none(),
        "a claimed job is not claimed twice"
    );
    assert_eq!(
        store.requeue_interrupted_delta_jobs().await.unwrap(),
        1,
        "a crash leaves it running: requeue it"
    );
    let again = store
        .claim_delta_job()
        .await
        .unwrap()
        .expect("requeued job");
    assert_eq!(again.attempts, 2);
    store
        .finish_delta_job(
            &again.id,
            DeltaJobStatus::Done,
            Some((&cc.to_hex(), 3)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.built_deltas_to(&[bb]).await.unwrap(),
        vec![BuiltDelta {
            source: aa,
            target: bb,
            sha256: cc,
            length: 3
        }]
    );
    assert!(
        store.built_deltas_to(&[aa]).await.unwrap().is_empty(),
        "only deltas to the asked targets"
    );
    let actions: Vec<String> = store
        .list_audit(20, None)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert!(
        actions.contains(&"rollout.start".to_owned())
            && actions.contains(&"release.create".to_owned()),
        "{actions:?}"
    );

    // The check-in path's group commit of new deployments: writes that wait together
    // share a transaction; one that cannot be written (an unknown rollout) fails alone,
    // and each of the others is written once.
    use ota_server::engine::group_commit::{AssignmentWriter, Assignments};
    use ota_server::store::AssignmentWrite;
    let write = |rollout_id: &str, ecu: &str| AssignmentWrite {
        rollout_id: rollout_id.to_owned(),
        vehicle_id: "veh-1".to_owned(),
        phase: 0,
        new: vec![NewDeployment {
            deployment_id: format!("dep_g_{ecu}"),
            ecu: ecu.to_owned(),
            from_sha256: None,
            retry: false,
        }],
        now: now_ms(),
    };
    let mut writes: Vec<AssignmentWrite> = (0..12)
        .map(|i| write(&rollout.id, &format!("e{i}")))
        .collect();
    writes.push(write("ro_unknown", "bad"));
    writes.push(write(&rollout.id, "e0"));
    assert!(
        store.insert_assignments(&writes).await.is_err(),
        "one bad write fails its transaction"
    );
    assert_eq!(
        store.deployments_for_vehicle("veh-1").await.unwrap().len(),
        2,
        "nothing of a failed transaction is written"
    );
    let writer = AssignmentWriter::new(Assignments(store.clone()), 128, 2);
    let results =
        futures_util::future::join_all(writes.iter().cloned().map(|w| writer.record(w))).await;
    for (w, result) in writes.iter().zip(&results) {
        assert_eq!(
            result.is_ok(),
            w.rollout_id == rollout.id,
            "{}: {result:?}",
            w.new[0].ecu
        );
    }
    let ids: Vec<String> = store
        .deployments_for_vehicle("veh-1")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .filter(|id| id.starts_with("dep_g_"))
        .collect();
    assert_eq!(ids.len(), 12, "each good write once: {ids:?}");
    let url = match &db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", _dir.path().join("ota.db").display()),
    };
    assert_tallies_agree(&url).await;

    // Many small writes append many tally rows on PostgreSQL; a read folds them.
    for sequence in 2..(2 * COMPACT_ABOVE as u64) {
        let status =
            [DeploymentStatus::Downloading, DeploymentStatus::Installed][(sequence % 2) as usize];
        store
            .update_deployment("dep_slow", "veh-1", status, sequence, None, now_ms())
            .await
            .unwrap();
    }
    if db.is_some() {
        assert!(
            tally_rows(&url).await > COMPACT_ABOVE,
            "each statement appended its rows"
        );
    }
    let before = store.phase_counts(&rollout.id).await.unwrap();
    assert_eq!(before, store.phase_counts(&rollout.id).await.unwrap());
    assert!(
        tally_rows(&url).await <= 16,
        "a read of many appended rows folds them: {} rows",
        tally_rows(&url).await
    );
    assert_tallies_agree(&url).await;

    // An abort cancels the deployments not yet installing.
    let current = store.get_rollout(&rollout.id).await.unwrap();
    let abort = plan(
        &current,
        &RolloutRequest::Operator(RolloutAction::Abort),
        &Facts::default(),
        now_ms(),
    )
    .unwrap();
    let (aborted, _) = store
        .apply_rollout_change(&actor(), &abort, None)
        .await
        .unwrap();
    assert_eq!(aborted.state, RolloutState::Aborted);
    let after = store.phase_counts(&rollout.id).await.unwrap();
    // Not yet installing (an installed one finishes: DESIGN §7).
    let unfinished = |c: &ota_server::store::PhaseCounts| c.assigned + c.downloading;
    assert!(unfinished(&before[&0]) > 0);
    assert_eq!(
        (unfinished(&after[&0]), after[&0].cancelled),
        (0, before[&0].cancelled + unfinished(&before[&0])),
        "every deployment not yet installing is cancelled"
    );
    assert_tallies_agree(&url).await;
    if let Some(db) = db {
        db.drop_now().await;
    }
}
both_backends!(
    rollouts_deployments_and_delta_jobs,
    rollouts_deployments_and_jobs
);

/// The rows of `deployment_tallies`.
async fn tally_rows(url: &str) -> i64 {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query("SELECT COUNT(*) AS n FROM deployment_tallies")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .try_get("n")
        .unwrap()
}

/// The tallies the triggers keep equal the deployments counted directly, key by key.
async fn assert_tallies_agree(url: &str) {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let read = |rows: Vec<sqlx::any::AnyRow>| {
        let mut keys: Vec<(String, i64, String, i64, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r.try_get("rollout_id").unwrap(),
                    r.try_get("phase_index").unwrap(),
                    r.try_get("status").unwrap(),
                    r.try_get("window_ms").unwrap(),
                    r.try_get("n").unwrap(),
                )
            })
            .collect();
        keys.sort();
        keys
    };
    let direct = read(
        sqlx::query(
            "SELECT rollout_id, phase_index, status, window_ms, COUNT(*) AS n FROM deployments \
             GROUP BY rollout_id, phase_index, status, window_ms",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap(),
    );
    let tallied = read(
        sqlx::query(
            "SELECT rollout_id, phase_index, status, window_ms, CAST(SUM(n) AS BIGINT) AS n \
             FROM deployment_tallies GROUP BY rollout_id, phase_index, status, window_ms \
             HAVING SUM(n) <> 0",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap(),
    );
    assert!(!direct.is_empty());
    assert_eq!(tallied, direct, "tallies against the deployments");
}

/// One relay at a time holds the rollout-events lease; another takes over once it
/// lapses or is given up.
async fn outbox_lease(backend: Backend) {
    let Some((store, _db, _dir)) = fresh_store(backend).await else {
        return;
    };
    let ttl = 10_000;
    assert!(store.take_outbox_lease("a", 1_000, ttl).await.unwrap());
    assert!(
        !store.take_outbox_lease("b", 2_000, ttl).await.unwrap(),
        "b must wait while a's lease runs"
    );
    assert!(
        store.take_outbox_lease("a", 5_000, ttl).await.unwrap(),
        "a renews its own lease"
    );
    assert!(
        !store.take_outbox_lease("b", 14_000, ttl).await.unwrap(),
        "the renewal moved the expiry to 15,000"
    );
    assert!(store.take_outbox_lease("b", 15_000, ttl).await.unwrap());
    assert!(!store.take_outbox_lease("a", 15_001, ttl).await.unwrap());
    store.release_outbox_lease("b").await.unwrap();
    assert!(
        store.take_outbox_lease("a", 15_002, ttl).await.unwrap(),
        "a lease given up is free at once"
    );
    assert_eq!(store.outbox_published(&[]).await.unwrap(), 0);
}
both_backends!(outbox_lease_is_held_by_one_relay_at_a_time, outbox_lease);

/// Group commit: check-ins that wait together are written in one transaction, and
/// each still gets its own answer — versions grow per vehicle in arrival order, a
/// replay in the same batch is refused, an unknown vehicle fails alone.
async fn checkins_group_commit(backend: Backend) {
    use ota_server::engine::group_commit::{CheckinWriter, Checkins};
    use ota_server::store::CheckinWrite;
    let Some((store, db, dir)) = fresh_store(backend).await else {
        return;
    };
    let vehicles: Vec<String> = (0..20).map(|i| format!("veh-g{i:02}")).collect();
    let new: Vec<NewVehicle> = vehicles
        .iter()
        .map(|id| NewVehicle {
            id: id.clone(),
            public_key: device_key().public_key().to_hex(),
            tags: Vec::new(),
            ecus: vec![("main".to_owned(), "hw-g".to_owned())],
        })
        .collect();
    store.insert_vehicles(&actor(), &new).await.unwrap();
    store.close().await;
    let url = match &db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", dir.path().join("ota.db").display()),
    };
    let mut writes = Vec::new();
    for round in 0..5 {
        for id in &vehicles {
            let mut checkin = checkin(id, None, 0);
            checkin.sent_at =
                ota_core::time::Timestamp::parse(&format!("2026-11-30T12:00:0{round}Z")).unwrap();
            writes.push(CheckinWrite {
                checkin,
                known: Vec::new(),
                now: now_ms(),
            });
        }
    }
    let replay = writes.len();
    writes.push(writes[0].clone());
    let unknown = writes.len();
    writes.push(CheckinWrite {
        checkin: checkin("veh-unknown", None, 0),
        known: Vec::new(),
        now: now_ms(),
    });
    // On a runtime of one thread every write is queued before a writer runs, so the
    // batching is deterministic.
    let (results, batches) = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let store = ota_server::store::Store::connect(&url, 3).await.unwrap();
                let writer = CheckinWriter::new(Checkins(store), 128, 2);
                let results =
                    futures_util::future::join_all(writes.into_iter().map(|w| writer.record(w)))
                        .await;
                (results, writer.batches())
            })
    })
    .join()
    .unwrap();
    assert_eq!(batches, 1, "102 waiting check-ins go in one transaction");
    assert!(matches!(results[replay], Ok(None)), "{:?}", results[replay]);
    assert!(
        matches!(results[unknown], Err(StoreError::NotFound { .. })),
        "{:?}",
        results[unknown]
    );
    for (v, _) in vehicles.iter().enumerate() {
        let versions: Vec<u64> = (0..5)
            .map(|round| results[round * 20 + v].as_ref().unwrap().unwrap())
            .collect();
        assert!(
            versions.windows(2).all(|pair| pair[0] < pair[1]),
            "director versions grow in arrival order: {versions:?}"
        );
    }
}
both_backends!(
    checkins_share_transactions_and_keep_their_answers,
    checkins_group_commit
);

async fn migrations_are_idempotent(backend: Backend) {
    let Some((store, db, dir)) = fresh_store(backend).await else {
        return;
    };
    store
        .insert_image(&actor(), image("hw-m", "1.0"))
        .await
        .unwrap();
    store.close().await;
    let url = match &db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", dir.path().join("ota.db").display()),
    };
    let reopened = ota_server::store::Store::connect(&url, 2)
        .await
        .expect("re-running applied migrations is a no-op");
    assert_eq!(
        reopened.list_images(None, 100).await.unwrap().len(),
        1,
        "data survives a restart"
    );
    reopened.close().await;
    if let Some(db) = db {
        db.drop_now().await;
    }
}
both_backends!(
    migrations_apply_once_and_data_survives_restart,
    migrations_are_idempotent
);
