//! Graceful shutdown (README: SIGINT/SIGTERM finish in-flight requests, MQTT messages
//! and delta jobs before exiting): an upload, a delta job and a check-in, each held in
//! flight when the shutdown signal arrives, all complete.

use crate::delta::{image_pair, put_blob, Gate, GatedEngine};
use crate::helpers::{checkin, device_key, signed_checkin, spawn_app_with, unique, Backend, Options};
use crate::mqtt::VehicleClient;
use ota_core::protocol::{topic, Channel};
use ota_core::encoding::Sha256Digest;
use ota_server::store::{DeltaJobStatus, Store};
use std::time::Duration;

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Waits (bounded, against a hang) until `condition` holds, checking between short pauses.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_an_in_flight_request_and_delta_job() {
    let (engine, gate) = GatedEngine::new();
    let Gate { started, release } = gate;
    let options = Options {
        delta_engine: Some(engine),
        ..Options::default()
    };
    let mut app = spawn_app_with(Backend::Sqlite, options).await.unwrap();
    let data_dir = app.dir.path().to_owned();

    // A delta job, held in flight by the gate once a worker claims it (workers look for
    // jobs every 5 s when idle).
    let (old, new) = image_pair();
    let (old_sha, new_sha) = (
        put_blob(&app.state.blobs, &old),
        put_blob(&app.state.blobs, &new),
    );
    assert!(app
        .state
        .store
        .enqueue_delta("ro_stop", "hw-a", &old_sha, &new_sha)
        .await
        .unwrap());

    // An upload whose body stays open while `tx` lives.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"start".to_vec())).await.unwrap();
    let upload = tokio::spawn(
        app.http
            .post(app.url("/api/v1/images?hardware_id=hw-stop&version=1"))
            .bearer_auth(&app.admin_token)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(tokio_stream_from(rx)))
            .send(),
    );
    // The server is inside the upload once its first chunk is in the blob store's
    // temporary directory.
    let tmp = data_dir.join("blobs").join("tmp");
    wait_until("the upload's first chunk reaches the server", || {
        std::fs::read_dir(&tmp).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.len() == 5))
        })
    })
    .await;
    tokio::time::timeout(Duration::from_secs(60), started)
        .await
        .expect("a worker claims the job")
        .expect("the build started");

    app.signal_stop();
    // Shutdown has begun once the listener is closed: new connections are refused.
    let address = app.address.trim_start_matches("http://").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(&address).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never stopped accepting connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Both in-flight operations still complete.
    tx.send(Ok(b" of an image".to_vec())).await.unwrap();
    drop(tx);
    let response = upload.await.unwrap().expect("the upload is answered");
    let (status, image) = crate::helpers::decode(response).await;
    assert_eq!(status, 201, "the in-flight upload is finished: {image}");
    release.send(()).expect("the build waits at the gate");
    app.wait_stopped().await;

    // What both wrote survives the shutdown: the image and the built delta.
    let digest = Sha256Digest::of(b"start of an image");
    assert_eq!(image["sha256"], digest.to_hex(), "{image}");
    let store = Store::connect(&app.database_url(), 1).await.unwrap();
    let images = store.list_images(Some("hw-stop"), 10).await.unwrap();
    assert_eq!(
        (images.len(), images[0].sha256.as_str()),
        (1, digest.to_hex().as_str()),
        "{images:?}"
    );
    let jobs = store.list_delta_jobs(Some("ro_stop")).await.unwrap();
    assert_eq!(
        jobs[0].status,
        DeltaJobStatus::Done,
        "the in-flight delta job finished before the server exited: {jobs:?}"
    );
    let delta = Sha256Digest::parse(jobs[0].delta_sha256.as_deref().unwrap()).unwrap();
    let blobs = ota_server::blobs::BlobStore::open(&data_dir.join("blobs")).unwrap();
    assert!(
        blobs.path_of(&delta).exists(),
        "the built delta is in the blob store"
    );
    store.close().await;
    app.stop().await;
}

/// A check-in held inside its handler (the `vehicles` table locked by the test on
/// PostgreSQL, which waits without a timeout) when the shutdown signal arrives is still
/// handled to the end: the server records it before exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_an_mqtt_message_being_handled() {
    let options = Options {
        mqtt: true,
        ..Options::default()
    };
    let Some(mut app) = spawn_app_with(Backend::Postgres, options).await else {
        return;
    };
    let vid = unique("veh-drain-");
    let key = device_key();
    app.register_vehicle(&vid, &key, "hw-d", &[]).await;
    // A first check-in answered: the server is subscribed.
    let mut vehicle = VehicleClient::connect(&[&vid]).await;
    let first = signed_checkin(&key, &checkin(&vid, None, 0));
    vehicle
        .expect(
            &topic(&vid, Channel::Directive),
            Some((&vid, Channel::CheckIn, &first)),
        )
        .await;

    let url = app.database_url();
    let mut locker = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let mut lock = sqlx::Connection::begin(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE vehicles IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut held = checkin(&vid, None, 0);
    held.agent_state = "held-at-shutdown".to_owned();
    vehicle
        .publish(&vid, Channel::CheckIn, signed_checkin(&key, &held))
        .await;
    // In flight: the server's handler waits on the lock.
    let mut watcher = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = sqlx::Row::get(
            &sqlx::query(
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query ILIKE '%vehicles%'",
            )
            .fetch_one(&mut watcher)
            .await
            .unwrap(),
            "n",
        );
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held check-in never reached the database"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    app.signal_stop();
    let address = app.address.trim_start_matches("http://").to_owned();
    while tokio::net::TcpStream::connect(&address).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never stopped accepting connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lock.rollback().await.unwrap();
    app.wait_stopped().await;

    let store = Store::connect(&url, 1).await.unwrap();
    let recorded = store.get_vehicle(&vid).await.unwrap();
    assert_eq!(
        recorded.agent_state.as_deref(),
        Some("held-at-shutdown"),
        "the check-in in flight at shutdown was handled to the end: {recorded:?}"
    );
    store.close().await;
    drop((locker, watcher));
    app.stop().await;
}
