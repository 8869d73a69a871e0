//! Graceful shutdown (README: SIGINT/SIGTERM finish in-flight requests, MQTT messages
//! and delta jobs before exiting): an upload, a delta job and a check-in, each held in
//! flight when the shutdown signal arrives, all complete.

use crate::api::tokio_stream_from;
use crate::delta::{image_pair, put_blob, Gate, GatedEngine};
use crate::helpers::{
    checkin, device_key, signed_checkin, spawn_app_with, unique, Backend, Options,
};
use crate::mqtt::VehicleClient;
use ota_core::encoding::Sha256Digest;
use ota_core::protocol::{topic, Channel};
use ota_server::blobs::BlobStore;
use ota_server::jobs::DeltaEngine;
use ota_server::settings::Settings;
use ota_server::startup::Application;
use ota_server::store::{Actor, DeltaJobStatus, Store};
use ota_server::tokens::{create_token, Scope};
use std::sync::Arc;
use std::time::Duration;

/// Waits (bounded, against a hang) until `condition` holds, checking between short pauses.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server on a runtime of its own that is dropped when `run_until_stopped` returns,
/// as at process exit: whatever the server did not wait for dies with it (a test
/// runtime would otherwise keep an abandoned connection or job running).
struct OwnRuntimeServer {
    address: String,
    admin_token: String,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl OwnRuntimeServer {
    async fn start(engine: Arc<dyn DeltaEngine>) -> OwnRuntimeServer {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            listen: "127.0.0.1:0".to_owned(),
            data_dir: dir.path().to_owned(),
            ..Settings::default()
        };
        settings.mqtt.embedded = "off".to_owned();
        let (ready, started) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let result = runtime.block_on(async move {
                let app = Application::build(settings)
                    .await?
                    .with_delta_engine(engine);
                let (_, token) = create_token(
                    &app.state().store,
                    &Actor::system(),
                    "test-admin",
                    &[Scope::Admin],
                )
                .await?;
                let _ = ready.send((format!("http://{}", app.address()), token));
                app.run_until_stopped(async move {
                    let _ = stopped.await;
                })
                .await
            });
            drop(runtime);
            result
        });
        let (address, admin_token) = started.await.expect("the server starts");
        OwnRuntimeServer {
            address,
            admin_token,
            dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    async fn wait_stopped(&mut self) {
        let thread = self.thread.take().expect("running");
        let result = tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap()
            .expect("the server thread does not panic");
        assert!(result.is_ok(), "the server stops cleanly: {result:?}");
    }
}

/// Waits until the listener is closed (new connections refused): shutdown has begun.
async fn wait_refused(address: &str) {
    let address = address.trim_start_matches("http://").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(&address).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never stopped accepting connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which of the two held operations is let go last: while one is held, the server is
/// still running, so only the last one tells whether shutdown waits for its kind.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Last {
    Upload,
    Job,
}

/// An upload and a delta job, both in flight when the shutdown signal arrives; one is
/// finished, then the other, and both must complete before the server exits.
async fn upload_and_job_in_flight_at_shutdown(last: Last) {
    let (engine, gate) = GatedEngine::new();
    let Gate { started, release } = gate;
    let mut server = OwnRuntimeServer::start(engine).await;
    let data_dir = server.dir.path().to_owned();
    // The test's own connection to the server's SQLite database.
    let store = Store::connect(
        &format!("sqlite://{}", data_dir.join("ota.db").display()),
        1,
    )
    .await
    .unwrap();
    let blobs = BlobStore::local(&data_dir.join("blobs")).unwrap();

    // A delta job, held in flight by the gate once a worker claims it (workers look for
    // jobs every 5 s when idle).
    let (old, new) = image_pair();
    let (old_sha, new_sha) = (put_blob(&blobs, &old).await, put_blob(&blobs, &new).await);
    assert!(store
        .enqueue_delta("ro_stop", "hw-a", &old_sha, &new_sha)
        .await
        .unwrap());

    // An upload whose body stays open while `tx` lives.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"start".to_vec())).await.unwrap();
    let upload = tokio::spawn(
        reqwest::Client::new()
            .post(format!(
                "{}/api/v1/images?hardware_id=hw-stop&version=1",
                server.address
            ))
            .bearer_auth(&server.admin_token)
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

    server.signal_stop();
    wait_refused(&server.address).await;

    let finish_job = || async {
        release.send(()).expect("the build waits at the gate");
    };
    let finish_upload = async move {
        tx.send(Ok(b" of an image".to_vec()))
            .await
            .expect("the in-flight upload's connection is still open");
        drop(tx);
        let response = upload
            .await
            .unwrap()
            .expect("the in-flight upload is answered, not cut off");
        let (status, image) = crate::helpers::decode(response).await;
        assert_eq!(status, 201, "the in-flight upload is finished: {image}");
    };
    let job_ended = || async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let jobs = store.list_delta_jobs(Some("ro_stop")).await.unwrap();
            if jobs[0].status != DeltaJobStatus::Running {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the job never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // A server that did not wait for the kind let go last exits as soon as the other
    // is done, and its runtime takes that operation down.
    match last {
        Last::Upload => {
            finish_job().await;
            job_ended().await;
            finish_upload.await;
        }
        Last::Job => {
            finish_upload.await;
            finish_job().await;
        }
    }
    server.wait_stopped().await;

    let job = store.list_delta_jobs(Some("ro_stop")).await.unwrap()[0].clone();
    assert_eq!(
        job.status,
        DeltaJobStatus::Done,
        "the in-flight delta job is finished during shutdown: {job:?}"
    );
    let delta = Sha256Digest::parse(job.delta_sha256.as_deref().unwrap()).unwrap();
    assert!(
        blobs.length_of(&delta).await.unwrap().is_some(),
        "the built delta is in the blob store"
    );
    let digest = Sha256Digest::of(b"start of an image");
    let images = store.list_images(Some("hw-stop"), 10).await.unwrap();
    assert_eq!(
        (images.len(), images[0].sha256.as_str()),
        (1, digest.to_hex().as_str()),
        "{images:?}"
    );
    assert!(blobs.length_of(&digest).await.unwrap().is_some());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_an_in_flight_request() {
    upload_and_job_in_flight_at_shutdown(Last::Upload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_an_in_flight_delta_job() {
    upload_and_job_in_flight_at_shutdown(Last::Job).await;
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
    wait_refused(&app.address).await;
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
