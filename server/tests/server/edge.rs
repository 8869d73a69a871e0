//! The API's edge (issue 11): every integer has a range that fits the database, every
//! text input one rule per kind, bounded lists, `limit` on every list route, bounded
//! metric labels, errors that say each thing once, and `otactl` output safe for a
//! terminal.

use crate::both_backends;
use crate::helpers::{device_key, spawn_app, spawn_app_with, Backend, Options, TestApp};
use serde_json::{json, Value};

async fn app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, Options::default()).await
}

/// The first problem's field of a 422.
fn field_of(status: u16, problem: &Value) -> String {
    assert_eq!(status, 422, "{problem}");
    problem["errors"][0]["field"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn fields_of(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn integers(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    let image = app.upload("hw-int", "1.0.0", b"image".repeat(50)).await;
    let release = |name: &str, security_version: Value| {
        json!({ "name": name, "version": "1.0.0", "security_version": security_version,
                "images": [image["id"]] })
    };
    // 2^63 used to be stored negative and read back as 0.
    for (security_version, field) in [
        (json!(9_223_372_036_854_775_808u64), "security_version"),
        (json!(u64::MAX), "security_version"),
        (json!(-1), "security_version"),
        (json!(1e300), "security_version"),
    ] {
        let (status, problem) = app
            .post(
                "/api/v1/releases",
                &app.admin_token,
                &release("r-big", security_version.clone()),
            )
            .await;
        assert_eq!(field_of(status, &problem), field, "{security_version}");
        let detail = problem["detail"].as_str().unwrap();
        assert_eq!(
            detail.matches("expected").count(),
            1,
            "the expectation is said once: {detail}"
        );
    }
    // The largest accepted value is stored and read back without loss.
    let (status, created) = app
        .post(
            "/api/v1/releases",
            &app.admin_token,
            &release("r-max", json!(i64::MAX)),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (_, read) = app
        .get(
            &format!("/api/v1/releases/{}", created["id"].as_str().unwrap()),
            &app.read_token,
        )
        .await;
    assert_eq!(read["security_version"], json!(i64::MAX), "{read}");
    let (status, problem) = app
        .post(
            "/api/v1/releases",
            &app.admin_token,
            &json!({ "name": "r-exp", "version": "1.0.0", "security_version": 1,
                     "images": [image["id"]], "expires_in_days": 0 }),
        )
        .await;
    assert_eq!(field_of(status, &problem), "expires_in_days");

    // Rollout durations: 2^63 seconds of soak used to turn negative and skip the soak.
    let rollout = |phase: Value, retry: Value| json!({ "name": "ro", "release_id": created["id"], "phases": [phase], "retry": retry });
    for (body, field) in [
        (
            rollout(
                json!({ "name": "p", "percent": 100, "min_soak_seconds": 9_223_372_036_854_775_808u64 }),
                json!({}),
            ),
            "phases[0].min_soak_seconds",
        ),
        (
            rollout(
                json!({ "name": "p", "percent": 100, "min_soak_seconds": 366 * 86_400 + 1 }),
                json!({}),
            ),
            "phases[0].min_soak_seconds",
        ),
        (
            rollout(
                json!({ "name": "p", "percent": 100 }),
                json!({ "backoff_seconds": u64::MAX }),
            ),
            "retry.backoff_seconds",
        ),
        (
            rollout(
                json!({ "name": "p", "percent": 100 }),
                json!({ "max_attempts": 4_294_967_296u64 }),
            ),
            "retry.max_attempts",
        ),
        (
            rollout(json!({ "name": "p", "percent": 101 }), json!({})),
            "phases[0].percent",
        ),
        (
            {
                let mut body = rollout(json!({ "name": "p", "percent": 100 }), json!({}));
                body["abort_criteria"] = json!({ "in_progress_timeout_seconds": u64::MAX });
                body
            },
            "abort_criteria.in_progress_timeout_seconds",
        ),
    ] {
        let (status, problem) = app
            .post("/api/v1/rollouts", &app.rollout_token, &body)
            .await;
        assert_eq!(field_of(status, &problem), field, "{body}");
    }
    // Query-string integers name their parameter too.
    for (path, field) in [
        ("/api/v1/vehicles?limit=99999999999999999999", "limit"),
        ("/api/v1/vehicles?limit=abc", "limit"),
        ("/api/v1/images?limit=0", "limit"),
        ("/api/v1/releases?limit=1001", "limit"),
        ("/api/v1/audit?limit=-1", "limit"),
    ] {
        let (status, problem) = app.get(path, &app.admin_token).await;
        assert_eq!(field_of(status, &problem), field, "{path}");
    }
    app.stop().await;
}
both_backends!(
    integers_have_ranges_named_in_problems_and_fit_the_database,
    integers
);

async fn texts(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    // A NUL byte in a filter used to reach PostgreSQL (500).
    for path in [
        "/api/v1/images?hardware_id=%00",
        "/api/v1/vehicles?tag=%1b%5b2J",
        "/api/v1/vehicles?hardware_id=a%00b",
    ] {
        let (status, problem) = app.get(path, &app.read_token).await;
        assert_eq!(status, 422, "{path}: {problem}");
    }
    let image = app.upload("hw-text", "1.0.0", b"text".repeat(50)).await;
    let long = format!("a\u{0}\u{1b}[2J{}", "x".repeat(5800));
    let (status, problem) = app
        .post(
            "/api/v1/releases",
            &app.admin_token,
            &json!({ "name": long, "version": "1", "security_version": 1, "images": [image["id"]] }),
        )
        .await;
    assert_eq!(field_of(status, &problem), "name");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.len() < 400 && !detail.contains('\u{1b}') && !detail.contains('\u{0}'),
        "a refused value is shown escaped and cut: {detail}"
    );
    let (status, release) = app
        .post(
            "/api/v1/releases",
            &app.admin_token,
            &json!({ "name": "rel-text", "version": "1", "security_version": 1, "images": [image["id"]] }),
        )
        .await;
    assert_eq!(status, 201, "{release}");
    // Names in rollouts: the rollout, its phases, every selector entry, the network.
    let (status, problem) = app
        .post(
            "/api/v1/rollouts",
            &app.rollout_token,
            &json!({ "name": "ok", "release_id": release["id"],
                     "phases": [{ "name": "canary\u{1b}]0;ALL VEHICLES UPDATED OK\u{7}", "percent": 5 },
                                { "name": "all", "percent": 100 }],
                     "selector": { "tags": ["eu", "eu"], "hardware_ids": ["hw\u{0}"],
                                   "vehicle_ids": ["a/b"], "current_versions": ["1 0"] },
                     "preconditions": { "network": "wi\u{1b}fi" } }),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let mut fields = fields_of(&problem);
    fields.sort();
    assert_eq!(
        fields,
        [
            "phases[0].name",
            "preconditions.network",
            "selector.current_versions[0]",
            "selector.hardware_ids[0]",
            "selector.tags[1]",
            "selector.vehicle_ids[0]",
        ],
        "{problem}"
    );
    let too_many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    let (status, problem) = app
        .post(
            "/api/v1/rollouts",
            &app.rollout_token,
            &json!({ "name": "ok", "release_id": release["id"],
                     "phases": [{ "name": "all", "percent": 100 }],
                     "selector": { "tags": too_many } }),
        )
        .await;
    assert_eq!(field_of(status, &problem), "selector.tags");

    // Vehicles: bounded, duplicate-free tags; a key error says what is wrong once.
    let key = device_key();
    let registration = |id: &str, tags: Vec<String>, public_key: String| {
        json!({ "id": id, "public_key": public_key,
                "ecus": [{ "ecu": "main", "hardware_id": "hw-text" }], "tags": tags })
    };
    let tags: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
    let (status, problem) = app
        .post(
            "/api/v1/vehicles",
            &app.admin_token,
            &registration("veh-tags", tags, key.public_key().to_hex()),
        )
        .await;
    assert_eq!(field_of(status, &problem), "tags");
    let (status, problem) = app
        .post(
            "/api/v1/vehicles",
            &app.admin_token,
            &registration(
                "veh-tags",
                vec!["eu".into(), "eu".into()],
                key.public_key().to_hex(),
            ),
        )
        .await;
    assert_eq!(field_of(status, &problem), "tags[1]");
    let (status, problem) = app
        .post(
            "/api/v1/vehicles",
            &app.admin_token,
            &registration("veh-key", vec![], "ab".repeat(30)),
        )
        .await;
    assert_eq!(field_of(status, &problem), "public_key");
    let detail = problem["detail"].as_str().unwrap();
    assert_eq!(
        detail,
        "public_key: expected 64 lowercase hex digits (raw Ed25519 public key), got 60 characters"
    );

    // One vehicle id rule: an id with dots registers and its credential works.
    app.register_vehicle("veh.with.dots", &key, "hw-text", &["eu"])
        .await;
    let response = app
        .vehicle_get("veh.with.dots", &key, "/v1/metadata/root/1.json")
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let (status, vehicle) = app
        .get("/api/v1/vehicles/veh.with.dots", &app.read_token)
        .await;
    assert_eq!(status, 200, "{vehicle}");
    app.stop().await;
}
both_backends!(text_inputs_follow_one_rule_per_kind, texts);

async fn limits(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    for i in 0..3 {
        app.release_and_rollout(
            &format!("hw-lim{i}"),
            json!([{ "name": "all", "percent": 100 }]),
        )
        .await;
    }
    for (path, expected) in [
        ("/api/v1/images", Some(3)),
        ("/api/v1/releases", Some(3)),
        ("/api/v1/rollouts", Some(3)),
        ("/api/v1/audit", None),
    ] {
        let (status, all) = app.get(path, &app.admin_token).await;
        assert_eq!(status, 200, "{path}: {all}");
        let total = all["items"].as_array().unwrap().len();
        assert!(total >= 3, "{path}: {all}");
        if let Some(expected) = expected {
            assert_eq!(total, expected, "{path}");
        }
        let (status, one) = app.get(&format!("{path}?limit=1"), &app.admin_token).await;
        assert_eq!(status, 200, "{path}: {one}");
        assert_eq!(
            one["items"].as_array().unwrap().len(),
            total.min(1),
            "{path}?limit=1"
        );
    }
    let (status, _) = app
        .get("/api/v1/delta-jobs?limit=1", &app.admin_token)
        .await;
    assert_eq!(status, 200);
    // Unknown parameters are refused on every list route.
    for path in [
        "/api/v1/releases?limt=1",
        "/api/v1/images?limt=1",
        "/api/v1/rollouts?limt=1",
        "/api/v1/delta-jobs?limt=1",
    ] {
        let (status, problem) = app.get(path, &app.admin_token).await;
        assert_eq!(status, 400, "{path}: {problem}");
    }
    app.stop().await;
}
both_backends!(every_list_route_honours_limit, limits);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_method_label_is_bounded() {
    let app = spawn_app().await;
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("RANDOM{i}X").as_bytes()).unwrap();
        let response = app
            .http
            .request(method, app.url("/api/v1/images"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error());
    }
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("RANDOM"),
        "raw methods never become labels"
    );
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otactl_escapes_control_characters_it_prints() {
    let app = spawn_app().await;
    let (_, release, _) = app
        .release_and_rollout("hw-esc", json!([{ "name": "all", "percent": 100 }]))
        .await;
    // The API refuses such a name; one stored by other means (an older server, the
    // database) must still not reach the terminal raw.
    let hostile = "canary\u{1b}[2J\u{1b}]0;pwned\u{7}ALL VEHICLES UPDATED OK\u{9b}31m";
    let spec: ota_server::rollout::RolloutSpec =
        serde_json::from_value(json!({ "phases": [{ "name": hostile, "percent": 100 }] })).unwrap();
    let rollout = app
        .state
        .store
        .insert_rollout(
            &ota_server::store::Actor::system(),
            ota_server::store::NewRollout {
                name: "esc".to_owned(),
                release_id: release["id"].as_str().unwrap().to_owned(),
                spec,
                salt: "00".repeat(16),
            },
        )
        .await
        .unwrap();
    let config = app.dir.path().join("otactl.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{}\"\ntoken = \"{}\"\n",
            app.address, app.read_token
        ),
    )
    .unwrap();
    for json_flag in [false, true] {
        let mut args = vec!["rollout", "status", &rollout.id];
        if json_flag {
            args.insert(0, "--json");
        }
        let output = tokio::task::block_in_place(|| {
            std::process::Command::new(env!("CARGO_BIN_EXE_otactl"))
                .args(&args)
                .env("OTACTL_CONFIG", &config)
                .env_remove("OTACTL_URL")
                .env_remove("OTACTL_TOKEN")
                .output()
                .unwrap()
        });
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(
            !stdout
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "otactl printed a control character: {stdout:?}"
        );
        assert!(stdout.contains("canary\\u001b[2J"), "{stdout}");
        if json_flag {
            let value: Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(value["phases"][0]["name"], hostile, "JSON keeps the value");
        }
    }
    app.stop().await;
}

/// A duplicate version is refused before the body is read (item 6): the answer comes
/// while the body is still open, and nothing of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_upload_is_refused_before_its_body() {
    let app = spawn_app().await;
    app.upload("hw-dup", "1.0.0", b"first".repeat(20)).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"second upload, never finished".to_vec()))
        .await
        .unwrap();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let response = app
        .http
        .post(app.url("/api/v1/images?hardware_id=hw-dup&version=1.0.0"))
        .bearer_auth(&app.admin_token)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let (status, problem) = crate::helpers::decode(response).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("1.0.0"),
        "{problem}"
    );
    drop(tx);
    app.stop().await;
}

async fn tokens(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    let (record, token) = ota_server::tokens::create_token(
        &app.state.store,
        &ota_server::store::Actor::system(),
        "ci-bot",
        &[ota_server::tokens::Scope::Read],
    )
    .await
    .unwrap();
    let (status, _) = app.get("/api/v1/images", &token).await;
    assert_eq!(status, 200);
    let (status, _) = app.get("/api/v1/tokens", &app.read_token).await;
    assert_eq!(status, 403, "listing tokens needs admin");
    let (status, list) = app.get("/api/v1/tokens", &app.admin_token).await;
    assert_eq!(status, 200, "{list}");
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == record.id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(listed["name"], "ci-bot");
    assert_eq!(listed["revoked_at"], Value::Null);
    assert!(
        !list.to_string().contains(&token),
        "a token's value is never listed"
    );
    let revoke = format!("/api/v1/tokens/{}/revoke", record.id);
    let (status, _) = app.post(&revoke, &app.read_token, &json!({})).await;
    assert_eq!(status, 403);
    let (status, body) = app.post(&revoke, &app.admin_token, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["revoked_at"].is_string(), "{body}");
    let (status, _) = app.get("/api/v1/images", &token).await;
    assert_eq!(status, 401, "a revoked token is refused at once");
    let (status, _) = app.post(&revoke, &app.admin_token, &json!({})).await;
    assert_eq!(status, 409, "revoking twice is a conflict");
    let (status, _) = app
        .post(
            "/api/v1/tokens/tok_0000000000000000/revoke",
            &app.admin_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);
    // otactl lists and revokes too.
    let (other, _) = ota_server::tokens::create_token(
        &app.state.store,
        &ota_server::store::Actor::system(),
        "old-laptop",
        &[ota_server::tokens::Scope::Read],
    )
    .await
    .unwrap();
    let config = app.dir.path().join("otactl.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{}\"\ntoken = \"{}\"\n",
            app.address, app.admin_token
        ),
    )
    .unwrap();
    let otactl = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_otactl"))
            .args(args)
            .env("OTACTL_CONFIG", &config)
            .env_remove("OTACTL_URL")
            .env_remove("OTACTL_TOKEN")
            .output()
            .unwrap();
        assert!(output.status.success(), "otactl {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let (table, revoked) = tokio::task::block_in_place(|| {
        (
            otactl(&["token", "list"]),
            otactl(&["--json", "token", "revoke", &other.id]),
        )
    });
    assert!(
        table.contains("old-laptop") && table.contains("REVOKED_AT"),
        "{table}"
    );
    let revoked: Value = serde_json::from_str(&revoked).unwrap();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let (_, audit) = app.get("/api/v1/audit?limit=5", &app.admin_token).await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "token.revoke"
                && e["subject"] == record.id.as_str()
                && e["actor"] == "test-admin"),
        "revocation is audited: {audit}"
    );
    app.stop().await;
}
both_backends!(tokens_are_listed_and_revoked_by_admins_audited, tokens);

/// `ota_dependency_breaker_rejections_total{dependency="<dependency>"}` (0 before the
/// first refusal).
async fn breaker_refusals(app: &TestApp, dependency: &str) -> u64 {
    let label = format!("dependency=\"{dependency}\"");
    app.metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("ota_dependency_breaker_rejections_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// `/readyz`'s body, in either state (a report, not a problem).
async fn ready(app: &TestApp) -> Value {
    let response = app.http.get(app.url("/readyz")).send().await.unwrap();
    response.json().await.unwrap()
}

/// Calls `path` until the breaker of `dependency` refuses one; every answer before is
/// that dependency's own 503. Returns how many calls failed before the refusal.
async fn fail_until_refused(app: &TestApp, path: &str, described: &str) -> usize {
    let mut failures = 0;
    loop {
        let (status, problem) = app.get(path, &app.read_token).await;
        assert_eq!(status, 503, "{path}: {problem}");
        assert_eq!(
            problem["type"], "urn:ota:problem:dependency-unavailable",
            "{problem}"
        );
        let detail = problem["detail"].as_str().unwrap();
        if detail.contains("circuit breaker open") {
            assert!(detail.starts_with(described), "{detail}");
            return failures;
        }
        assert_eq!(
            detail,
            format!("{described} is unavailable; retry shortly"),
            "{problem}"
        );
        failures += 1;
        assert!(failures <= 20, "the breaker never opened");
    }
}

/// Waits (bounded) until `path` answers 200 again and the breaker reports closed.
async fn wait_until_recovered(app: &TestApp, path: &str, dependency: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, _) = app.get(path, &app.read_token).await;
        let ready = ready(app).await;
        if status == 200 && ready["breakers"][dependency] == "closed" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} did not recover: {status}, {ready}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// DESIGN.md §7: a broken blob store fails fast behind its breaker, the rest of the API
/// serves on, and a probe closes the breaker once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_blob_store_opens_its_breaker_while_the_rest_of_the_api_serves_on() {
    let options = Options {
        breaker_open_seconds: Some(1),
        ..Options::default()
    };
    let app = spawn_app_with(Backend::Sqlite, options).await.unwrap();
    let image = app.upload("hw-b", "1.0.0", vec![7u8; 1000]).await;
    let blob = format!("/v1/blobs/{}", image["sha256"].as_str().unwrap());
    assert_eq!(app.get(&blob, &app.read_token).await.0, 200);
    assert_eq!(
        ready(&app).await["breakers"],
        json!({ "database": "closed", "blob_store": "closed", "kafka": "closed" })
    );

    // The blob directory replaced by a file: every read fails.
    let dir = app.dir.path().join("blobs").join("sha256");
    let aside = app.dir.path().join("blobs").join("sha256.aside");
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let refused_before = breaker_refusals(&app, "blob_store").await;
    let failures = fail_until_refused(&app, &blob, "the blob store").await;
    // Two good calls (the upload, a read) and three failed ones: five calls, the
    // minimum, 60% failed, at least the 50% threshold.
    assert_eq!(
        failures, 3,
        "opens as soon as the window holds enough failed calls"
    );
    assert!(breaker_refusals(&app, "blob_store").await > refused_before);
    let report = ready(&app).await;
    assert_eq!(report["breakers"]["blob_store"], "open", "{report}");
    let refused = app
        .http
        .get(app.url(&blob))
        .bearer_auth(&app.read_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.headers()["retry-after"],
        "1",
        "Retry-After is the breaker's open time"
    );
    // Routes that need only the database are not behind the blob store's breaker.
    let (status, images) = app.get("/api/v1/images", &app.read_token).await;
    assert_eq!(status, 200, "{images}");
    assert_eq!(report["breakers"]["database"], "closed", "{report}");

    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    wait_until_recovered(&app, &blob, "blob_store").await;
    app.stop().await;
}

/// DESIGN.md §7: a database that refuses connections fails fast behind its breaker
/// (503 naming it, not a 500 after the pool's timeout), and the API recovers by
/// itself once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_opens_its_breaker_and_the_api_recovers_by_itself() {
    let options = Options {
        breaker_open_seconds: Some(1),
        ..Options::default()
    };
    let Some(app) = spawn_app_with(Backend::Postgres, options).await else {
        return;
    };
    assert_eq!(app.get("/api/v1/images", &app.read_token).await.0, 200);
    let database = app.database().expect("a PostgreSQL test database");
    database.allow_connections(false).await;
    let refused_before = breaker_refusals(&app, "database").await;
    let failures = fail_until_refused(&app, "/api/v1/images", "the database").await;
    // One good call and four failed ones: five calls, the minimum, 80% failed.
    assert_eq!(
        failures, 4,
        "opens as soon as the window holds enough failed calls"
    );
    assert!(breaker_refusals(&app, "database").await > refused_before);
    let report = ready(&app).await;
    assert_eq!(
        (&report["database"], &report["breakers"]["database"]),
        (&json!("unreachable"), &json!("open")),
        "{report}"
    );
    // Metrics stay outside the breakers: an outage is when they are needed.
    assert!(app
        .metrics_text()
        .await
        .contains("ota_dependency_breaker_state"));

    database.allow_connections(true).await;
    wait_until_recovered(&app, "/api/v1/images", "database").await;
    app.stop().await;
}
