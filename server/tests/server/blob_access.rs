//! Vehicle request credentials and blob access (PROTOCOL.md §10), on both backends: a
//! credential authenticates exactly the request it signed, and a vehicle may fetch only
//! the blobs its current or recent directives name.

use crate::both_backends;
use crate::helpers::{
    checkin, counts_by_reason, decode, device_key, signed_checkin, spawn_app_with,
    vehicle_credential, Backend, Options, TestApp,
};
use ota_core::encoding::Sha256Digest;
use ota_core::envelope::Envelope;
use ota_core::key::SigningKey;
use ota_core::metadata::{parse_document, DirectorMetadata};
use serde_json::{json, Value};

/// Incompressible bytes (as machine code mostly is), so deltas are worth building.
fn firmware(seed: u32) -> Vec<u8> {
    (0u32..1024)
        .flat_map(|i| Sha256Digest::of(&(i ^ seed.rotate_left(16)).to_le_bytes()).0)
        .collect()
}

/// `new` with a few edits, as adjacent firmware versions differ.
fn edited(new: &[u8], marker: &[u8; 8]) -> Vec<u8> {
    let mut old = new.to_vec();
    old[1000..1008].copy_from_slice(marker);
    old.drain(20_000..20_100);
    old
}

async fn check_in(
    app: &TestApp,
    key: &SigningKey,
    vid: &str,
    installed: &[u8],
) -> DirectorMetadata {
    let bytes = signed_checkin(key, &checkin(vid, Some(("1.0.0", installed)), 0));
    let directive = app
        .state
        .engine
        .handle_checkin(vid, &bytes, ota_server::engine::wall_clock_ms())
        .await
        .expect("a registered vehicle's check-in is accepted");
    parse_document(&Envelope::parse(&directive).unwrap().payload).unwrap()
}

/// `ota_vehicle_requests_refused_total{reason="<reason>"}` from `/metrics`.
async fn refused(app: &TestApp, reason: &str) -> u64 {
    counts_by_reason(app, "ota_vehicle_requests_refused_total", &[reason]).await[0]
}

/// A GET as vehicle `vid` with `authorization`, decoded.
async fn get_with(app: &TestApp, target: &str, authorization: String) -> (u16, Value) {
    decode(
        app.http
            .get(app.url(target))
            .header("authorization", authorization)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn blob_access(backend: Backend) {
    let Some(app) = spawn_app_with(backend, Options::default()).await else {
        return;
    };
    let (key_a, key_b, key_c) = (device_key(), device_key(), device_key());
    app.register_vehicle("veh-a", &key_a, "hw-v", &[]).await;
    app.register_vehicle("veh-b", &key_b, "hw-v", &[]).await;
    // Not in the release's hardware: never assigned anything.
    app.register_vehicle("veh-c", &key_c, "hw-c", &[]).await;
    let new = firmware(1);
    let (old_a, old_b) = (edited(&new, b"OLD-AAAA"), edited(&new, b"OLD-BBBB"));
    app.upload("hw-v", "1.0.0", old_a.clone()).await;
    app.upload("hw-v", "1.0.1", old_b.clone()).await;
    let unrelated = app.upload("hw-u", "9.0.0", firmware(9)).await;
    // Both vehicles report their installed image, so the rollout builds a delta for each.
    check_in(&app, &key_a, "veh-a", &old_a).await;
    check_in(&app, &key_b, "veh-b", &old_b).await;
    let image = app.upload("hw-v", "2.0.0", new.clone()).await;
    let (status, release) = app
        .post("/api/v1/releases", &app.admin_token, &json!({ "name": "access", "version": "2.0.0", "security_version": 1, "images": [image["id"]] }))
        .await;
    assert_eq!(status, 201, "{release}");
    let (status, rollout) = app
        .post("/api/v1/rollouts", &app.admin_token, &json!({ "name": "access", "release_id": release["id"], "phases": [{ "name": "all", "percent": 100 }] }))
        .await;
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .post(
            &format!("/api/v1/rollouts/{id}/start"),
            &app.rollout_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let jobs_done = || async {
        let (_, jobs) = app
            .get(
                &format!("/api/v1/delta-jobs?rollout_id={id}"),
                &app.read_token,
            )
            .await;
        let jobs = jobs["items"].as_array().cloned().unwrap_or_default();
        (jobs.len() == 2 && jobs.iter().all(|j| j["status"] == "done")).then_some(jobs)
    };
    let mut built = None;
    for _ in 0..600 {
        built = jobs_done().await;
        if built.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(built.is_some(), "both deltas must be built");

    // Each vehicle is assigned the release's image with a delta from what it runs.
    let directive_a = check_in(&app, &key_a, "veh-a", &old_a).await;
    let directive_b = check_in(&app, &key_b, "veh-b", &old_b).await;
    let delta_a = directive_a.assignments[0]
        .delta
        .clone()
        .expect("a delta for veh-a");
    let delta_b = directive_b.assignments[0]
        .delta
        .clone()
        .expect("a delta for veh-b");
    assert_ne!(delta_a.sha256, delta_b.sha256);
    let image_path = format!("/v1/blobs/{}", Sha256Digest::of(&new));
    let delta_a_path = format!("/v1/blobs/{}", delta_a.sha256);
    let delta_b_path = format!("/v1/blobs/{}", delta_b.sha256);

    // The named image, with Range resume.
    let full = app.vehicle_get("veh-a", &key_a, &image_path).await;
    assert_eq!(full.status().as_u16(), 200);
    let etag = full.headers()["etag"].to_str().unwrap().to_owned();
    let head = full.bytes().await.unwrap()[..5000].to_vec();
    let resumed = app
        .http
        .get(app.url(&image_path))
        .header(
            "authorization",
            vehicle_credential("veh-a", &key_a, "GET", &image_path),
        )
        .header("range", "bytes=5000-")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status().as_u16(), 206);
    let mut joined = head;
    joined.extend_from_slice(&resumed.bytes().await.unwrap());
    assert!(
        joined == new,
        "the first 5000 bytes plus the resumed tail are the image"
    );
    // Its own delta.
    let response = app.vehicle_get("veh-a", &key_a, &delta_a_path).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap().len() as u64, delta_a.length);

    // Not named by its directives: another vehicle's delta, an unrelated image, the image
    // it runs (no rollback), and anything at all for a vehicle with no deployment.
    let not_named_before = refused(&app, "blob_not_named").await;
    let unrelated_path = format!("/v1/blobs/{}", unrelated["sha256"].as_str().unwrap());
    let own_old_path = format!("/v1/blobs/{}", Sha256Digest::of(&old_a));
    for (vid, key, path) in [
        ("veh-a", &key_a, &delta_b_path),
        ("veh-a", &key_a, &unrelated_path),
        ("veh-a", &key_a, &own_old_path),
        ("veh-c", &key_c, &image_path),
    ] {
        let (status, problem) =
            get_with(&app, path, vehicle_credential(vid, key, "GET", path)).await;
        assert_eq!(status, 403, "{vid} {path}: {problem}");
        assert_eq!(
            problem["type"], "urn:ota:problem:blob-not-named",
            "{problem}"
        );
    }
    assert!(refused(&app, "blob_not_named").await >= not_named_before + 4);
    // Operators with the read scope keep access to every blob.
    let (status, _) = app.get(&unrelated_path, &app.read_token).await;
    assert_eq!(status, 200);

    // A credential authenticates only the request it signed.
    let wrong_target_before = refused(&app, "wrong_target").await;
    let for_image = vehicle_credential("veh-a", &key_a, "GET", &image_path);
    let (status, problem) = get_with(&app, &delta_a_path, for_image.clone()).await;
    assert_eq!(
        (status, &problem["reason"]),
        (401, &json!("wrong_target")),
        "replayed for another (even permitted) path: {problem}"
    );
    assert_eq!(problem["type"], "urn:ota:problem:vehicle-credential");
    assert!(
        problem["detail"].as_str().unwrap().contains(&image_path),
        "the problem names the path it was signed for: {problem}"
    );
    assert!(refused(&app, "wrong_target").await > wrong_target_before);
    let (status, problem) = get_with(&app, &format!("{image_path}?x=1"), for_image.clone()).await;
    assert_eq!(
        (status, &problem["reason"]),
        (401, &json!("wrong_target")),
        "{problem}"
    );
    // Another method: signed for POST, sent as GET; signed for GET, sent as HEAD.
    let for_post = vehicle_credential("veh-a", &key_a, "POST", &image_path);
    let (status, problem) = get_with(&app, &image_path, for_post).await;
    assert_eq!(
        (status, &problem["reason"]),
        (401, &json!("wrong_method")),
        "{problem}"
    );
    let head = app
        .http
        .head(app.url(&image_path))
        .header("authorization", for_image.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.status().as_u16(),
        401,
        "a GET credential presented with HEAD"
    );
    // Editing the claimed path to match does not help: the signature covers the request.
    let edited = for_image.replace(&image_path, &delta_a_path);
    let (status, problem) = get_with(&app, &delta_a_path, edited).await;
    assert_eq!(
        (status, &problem["reason"]),
        (401, &json!("bad_signature")),
        "{problem}"
    );
    // The retired credential version is refused by name.
    let (status, problem) = get_with(&app, &image_path, "Vehicle veh-a.1.AAAA".to_owned()).await;
    assert_eq!(
        (status, &problem["reason"]),
        (401, &json!("retired_version")),
        "{problem}"
    );
    // The signed metadata routes take the same credential, for their own path.
    let (status, problem) = get_with(&app, "/v1/metadata/targets.json", for_image.clone()).await;
    assert_eq!(
        (status, &problem["reason"]),
        (401, &json!("wrong_target")),
        "{problem}"
    );
    let response = app
        .vehicle_get("veh-c", &key_c, "/v1/metadata/targets.json")
        .await;
    assert_eq!(
        response.status().as_u16(),
        200,
        "signed metadata is for every vehicle"
    );
    app.stop().await;
}
both_backends!(
    a_vehicle_fetches_only_blobs_its_directives_name_with_a_credential_for_that_request,
    blob_access
);
