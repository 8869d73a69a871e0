//! `otactl` (the real binary) drives a full release → rollout → pause/resume cycle
//! against a running server.

use crate::helpers::{device_key, spawn_app};
use serde_json::Value;
use std::process::Command;

fn otactl(
    app: &crate::helpers::TestApp,
    config: &std::path::Path,
    args: &[&str],
) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_otactl"))
        .args(args)
        .env("OTACTL_CONFIG", config)
        .env_remove("OTACTL_URL")
        .env_remove("OTACTL_TOKEN")
        .output()
        .expect("running otactl");
    let _ = app;
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json_of(args: &[&str], run: impl Fn(&[&str]) -> (bool, String, String)) -> Value {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(args);
    let (ok, stdout, stderr) = run(&with_json);
    assert!(ok, "otactl {args:?} failed: {stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("otactl {args:?} printed non-JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otactl_drives_release_rollout_pause_resume() {
    let app = spawn_app().await;
    let config = app.dir.path().join("otactl.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{}\"\ntoken = \"{}\"\n",
            app.address, app.admin_token
        ),
    )
    .unwrap();
    let image_file = app.dir.path().join("fw.bin");
    std::fs::write(&image_file, b"firmware 3.0".repeat(50)).unwrap();
    let run = |args: &[&str]| otactl(&app, &config, args);

    // Blocking child processes: keep them off the async workers.
    let (image, release, vehicle, rollout, paused, resumed, status, table, watch, bad) =
        tokio::task::block_in_place(|| {
            let image = json_of(
                &[
                    "image",
                    "upload",
                    image_file.to_str().unwrap(),
                    "--hardware-id",
                    "hw-c",
                    "--version",
                    "3.0.0",
                ],
                run,
            );
            let image_id = image["id"].as_str().unwrap().to_owned();
            // Offline signing: otactl signs the targets metadata with the targets key itself.
            let key = app.dir.path().join("dev-keys/targets.key.json");
            let release = json_of(
                &[
                    "release",
                    "create",
                    "--name",
                    "r3",
                    "--version",
                    "3.0.0",
                    "--security-version",
                    "3",
                    "--image",
                    &image_id,
                    "--sign-key",
                    key.to_str().unwrap(),
                ],
                run,
            );
            let public = device_key().public_key().to_hex();
            let vehicle = json_of(
                &[
                    "vehicle",
                    "register",
                    "--id",
                    "veh-ctl",
                    "--public-key",
                    &public,
                    "--ecu",
                    "main=hw-c",
                    "--tag",
                    "fleet-a",
                ],
                run,
            );
            let release_id = release["id"].as_str().unwrap().to_owned();
            let rollout = json_of(
                &[
                    "rollout",
                    "create",
                    "--name",
                    "r3-canary",
                    "--release",
                    &release_id,
                    "--phase",
                    "canary:10:0:90",
                    "--phase",
                    "all:100",
                    "--max-per-minute",
                    "50",
                    "--tag",
                    "fleet-a",
                ],
                run,
            );
            let id = rollout["id"].as_str().unwrap().to_owned();
            json_of(&["rollout", "start", &id], run);
            let paused = json_of(&["rollout", "pause", &id], run);
            let resumed = json_of(&["rollout", "resume", &id], run);
            let status = json_of(&["rollout", "status", &id], run);
            let table = run(&["rollout", "status", &id]);
            let watch = run(&[
                "rollout",
                "status",
                &id,
                "--watch",
                "--updates",
                "2",
                "--interval",
                "1",
            ]);
            let bad = run(&[
                "rollout",
                "create",
                "--name",
                "x",
                "--release",
                &release_id,
                "--phase",
                "a:500",
            ]);
            (
                image, release, vehicle, rollout, paused, resumed, status, table, watch, bad,
            )
        });
    assert_eq!(image["hardware_id"], "hw-c");
    assert_eq!(
        release["signed_by"], "offline",
        "otactl signed the targets metadata"
    );
    assert_eq!(vehicle["tags"][0], "fleet-a");
    assert_eq!(rollout["spec"]["rate_limit"]["maximum_per_minute"], 50);
    assert_eq!(paused["state"], "paused");
    assert_eq!(resumed["state"], "running");
    assert_eq!(status["phases"].as_array().unwrap().len(), 2);
    assert_eq!(status["rollout"]["state"], "running");
    let (ok, table, _) = table;
    assert!(
        ok && table.contains("PHASE")
            && table.contains("canary")
            && table.contains("state: running"),
        "human table:\n{table}"
    );
    let (ok, watch, _) = watch;
    assert!(
        ok && watch.matches("\x1b[2J").count() == 2,
        "--watch redraws each update:\n{watch}"
    );
    let (ok, _, stderr) = bad;
    assert!(
        !ok && stderr.contains("phases[0].percent"),
        "errors name the field: {stderr}"
    );

    let (_, audit) = app.get("/api/v1/audit?limit=100", &app.admin_token).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"rollout.pause") && actions.contains(&"rollout.resume"),
        "{actions:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ota_server_tokens_create_makes_a_working_scoped_token() {
    let app = spawn_app().await;
    let output = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_ota-server"))
            .args([
                "tokens", "create", "--name", "ci-bot", "--scope", "read", "--json",
            ])
            .env("OTA_DATA_DIR", app.dir.path())
            .env_remove("OTA_CONFIG")
            .output()
            .expect("running ota-server")
    });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: Value = serde_json::from_slice(&output.stdout).unwrap();
    let token = created["token"].as_str().unwrap();
    let (status, _) = app.get("/api/v1/rollouts", token).await;
    assert_eq!(status, 200, "the new token reads");
    let (status, _) = app
        .post("/api/v1/rollouts", token, &serde_json::json!({}))
        .await;
    assert_eq!(status, 403, "but has only the read scope");
    assert!(
        created["expires_at"].is_null(),
        "no --expires-in: never expires"
    );
    let expiring = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_ota-server"))
            .args([
                "tokens",
                "create",
                "--name",
                "ci-day",
                "--scope",
                "read",
                "--json",
                "--expires-in",
                "1d",
            ])
            .env("OTA_DATA_DIR", app.dir.path())
            .env_remove("OTA_CONFIG")
            .output()
            .expect("running ota-server")
    });
    assert!(
        expiring.status.success(),
        "{}",
        String::from_utf8_lossy(&expiring.stderr)
    );
    let expiring: Value = serde_json::from_slice(&expiring.stdout).unwrap();
    let expires_at = chrono::DateTime::parse_from_rfc3339(expiring["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    let in_a_day = chrono::Utc::now().timestamp() + 86_400;
    assert!(
        (in_a_day - 120..=in_a_day).contains(&expires_at),
        "{expiring}"
    );
    let (status, _) = app
        .get("/api/v1/rollouts", expiring["token"].as_str().unwrap())
        .await;
    assert_eq!(status, 200, "a token within its lifetime reads");
    let bad_lifetime = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_ota-server"))
            .args([
                "tokens",
                "create",
                "--name",
                "x",
                "--scope",
                "read",
                "--expires-in",
                "forever",
            ])
            .env("OTA_DATA_DIR", app.dir.path())
            .output()
            .unwrap()
    });
    assert!(
        !bad_lifetime.status.success()
            && String::from_utf8_lossy(&bad_lifetime.stderr).contains("unit s, m, h or d"),
        "{}",
        String::from_utf8_lossy(&bad_lifetime.stderr)
    );
    let bad = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_ota-server"))
            .args(["tokens", "create", "--name", "x", "--scope", "root"])
            .env("OTA_DATA_DIR", app.dir.path())
            .output()
            .unwrap()
    });
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown scope")
    );
    let bad_config = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_ota-server"))
            .args(["tokens", "create", "--name", "x", "--scope", "read"])
            .env("OTA_DATA_DIR", app.dir.path())
            .env("OTA_DATABASE_MAX_CONNECTIONS", "lots")
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&bad_config.stderr);
    assert!(
        !bad_config.status.success() && stderr.contains("DATABASE_MAX_CONNECTIONS"),
        "bad settings are named: {stderr}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ota_server_serve_starts_with_defaults_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_ota-server"))
        .arg("serve")
        .env("OTA_DATA_DIR", dir.path())
        .env("OTA_LISTEN", format!("127.0.0.1:{port}"))
        .env("OTA_LOG__FORMAT", "json")
        .env_remove("OTA_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let mut healthy = false;
    for _ in 0..100 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            healthy = r.status().is_success();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(healthy, "the server must answer /healthz");
    assert!(
        dir.path().join("dev-keys/root.json").exists(),
        "dev keys are generated on first start"
    );
    assert!(
        dir.path().join("ota.db").exists(),
        "the embedded SQLite database is created"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
    assert!(
        output.status.success(),
        "SIGTERM must shut down cleanly: {output:?}"
    );
    let logs = String::from_utf8_lossy(&output.stdout);
    assert!(
        logs.contains("\"message\":\"stopped\""),
        "JSON logs record the clean stop: {logs}"
    );
    assert!(
        logs.contains("EPHEMERAL DEVELOPMENT key set"),
        "dev keys are announced loudly: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otactl_registers_vehicles_in_bulk_from_json_lines() {
    let app = spawn_app().await;
    let config = app.dir.path().join("otactl.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{}\"\ntoken = \"{}\"\n",
            app.address, app.admin_token
        ),
    )
    .unwrap();
    let lines: Vec<String> = (0..250)
        .map(|i| {
            serde_json::json!({ "id": format!("ctl-bulk-{i}"), "public_key": device_key().public_key().to_hex(),
                                "ecus": [{ "ecu": "main", "hardware_id": "hw-ctl-bulk" }] })
            .to_string()
        })
        .collect();
    let file = app.dir.path().join("fleet.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let mut bad = lines.clone();
    bad.push(
        r#"{"id":"ctl-bad","public_key":"zz","ecus":[{"ecu":"m","hardware_id":"h"}]}"#.to_owned(),
    );
    let bad_file = app.dir.path().join("bad.jsonl");
    std::fs::write(&bad_file, bad.join("\n")).unwrap();
    let run = |args: &[&str]| otactl(&app, &config, args);
    let (done, refused, listed) = tokio::task::block_in_place(|| {
        // A bad entry refuses the whole file, naming the entry.
        let refused = run(&[
            "vehicle",
            "register-bulk",
            "--file",
            bad_file.to_str().unwrap(),
        ]);
        let done = json_of(
            &["vehicle", "register-bulk", "--file", file.to_str().unwrap()],
            run,
        );
        let listed = json_of(&["vehicle", "list", "--hardware-id", "hw-ctl-bulk"], run);
        (done, refused, listed)
    });
    assert!(!refused.0, "a bad entry must fail the command");
    assert!(
        refused.2.contains("vehicles[250].public_key"),
        "the refusal names the entry and field: {}",
        refused.2
    );
    assert_eq!(done["registered"], 250, "{done}");
    assert_eq!(
        listed.as_array().unwrap().len(),
        250,
        "otactl follows the pages: all 250"
    );
    app.stop().await;
}

/// `otactl` list commands follow the cursor past one page (1,000 vehicles), and
/// `rollout dry-run`, `deployments`, `cancel-vehicle` and `retry-vehicle` work end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otactl_follows_pages_and_manages_deployments() {
    let app = spawn_app().await;
    let config = app.dir.path().join("otactl.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{}\"\ntoken = \"{}\"\n",
            app.address, app.admin_token
        ),
    )
    .unwrap();
    let key = crate::helpers::device_key();
    let vehicles: Vec<Value> = (0..1005)
        .map(|i| serde_json::json!({ "id": format!("veh-p{i:04}"), "public_key": key.public_key().to_hex(),
                                     "ecus": [{ "ecu": "main", "hardware_id": "hw-p" }] }))
        .collect();
    let (status, body) = app
        .post(
            "/api/v1/vehicles:bulk",
            &app.admin_token,
            &serde_json::json!({ "vehicles": vehicles }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let run = |args: &[&str]| otactl(&app, &config, args);
    let listed =
        tokio::task::block_in_place(|| json_of(&["vehicle", "list", "--hardware-id", "hw-p"], run));
    assert_eq!(
        listed.as_array().unwrap().len(),
        1005,
        "every page is followed"
    );

    let (_, _, rollout) = app
        .release_and_rollout(
            "hw-p",
            serde_json::json!([{ "name": "all", "percent": 100 }]),
        )
        .await;
    let release = rollout["release_id"].as_str().unwrap().to_owned();
    let dry = tokio::task::block_in_place(|| {
        json_of(
            &[
                "rollout",
                "dry-run",
                "--name",
                "d",
                "--release",
                &release,
                "--phase",
                "all:100",
            ],
            run,
        )
    });
    assert_eq!(dry["vehicles"], 1005, "{dry}");
    let id = rollout["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/api/v1/rollouts/{id}/start"),
        &app.admin_token,
        &serde_json::json!({}),
    )
    .await;
    let bytes =
        crate::helpers::signed_checkin(&key, &crate::helpers::checkin("veh-p0007", None, 0));
    app.state
        .engine
        .handle_checkin("veh-p0007", &bytes, ota_server::engine::wall_clock_ms())
        .await
        .unwrap();
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(&["rollout", "deployments", &id, "--state", "assigned"])
    });
    assert!(
        ok && out.contains("veh-p0007") && out.contains("assigned"),
        "{out}{err}"
    );
    let cancelled = tokio::task::block_in_place(|| {
        json_of(&["rollout", "cancel-vehicle", &id, "veh-p0007"], run)
    });
    assert_eq!(cancelled[0]["status"], "cancelled", "{cancelled}");
    let (ok, out, err) =
        tokio::task::block_in_place(|| run(&["rollout", "deployment", &id, "veh-p0007"]));
    assert!(
        ok && out.contains("allowed actions: retry") && out.contains("test-admin"),
        "{out}{err}"
    );
    let retried = tokio::task::block_in_place(|| {
        json_of(&["rollout", "retry-vehicle", &id, "veh-p0007"], run)
    });
    assert_eq!(retried[0]["attempts"], 2, "{retried}");
    let (ok, _, err) =
        tokio::task::block_in_place(|| run(&["rollout", "retry-vehicle", &id, "veh-p0007"]));
    assert!(!ok && err.contains("allowed actions: cancel"), "{err}");
    let audit =
        tokio::task::block_in_place(|| json_of(&["audit", "--action", "deployment.cancel"], run));
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    app.stop().await;
}

/// `otactl vehicle retag / rotate-key / decommission` and `image delete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otactl_changes_vehicles_and_deletes_images() {
    let app = spawn_app().await;
    let config = app.dir.path().join("otactl.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{}\"\ntoken = \"{}\"\n",
            app.address, app.admin_token
        ),
    )
    .unwrap();
    app.register_vehicle("veh-x", &device_key(), "hw-x", &["eu"])
        .await;
    let run = |args: &[&str]| otactl(&app, &config, args);
    let retagged = tokio::task::block_in_place(|| {
        json_of(
            &["vehicle", "retag", "veh-x", "--tag", "us", "--tag", "beta"],
            run,
        )
    });
    assert_eq!(retagged["tags"], serde_json::json!(["us", "beta"]));
    let key = device_key().public_key().to_hex();
    let rotated = tokio::task::block_in_place(|| {
        json_of(
            &["vehicle", "rotate-key", "veh-x", "--public-key", &key],
            run,
        )
    });
    assert_eq!(rotated["public_key"], key.as_str());
    let gone = tokio::task::block_in_place(|| json_of(&["vehicle", "decommission", "veh-x"], run));
    assert!(gone["decommissioned_at"].is_string(), "{gone}");
    let image = app.upload("hw-x", "1.0.0", b"x".repeat(10)).await;
    let (ok, out, err) =
        tokio::task::block_in_place(|| run(&["image", "delete", image["id"].as_str().unwrap()]));
    assert!(
        ok && out.contains(image["sha256"].as_str().unwrap()),
        "{out}{err}"
    );
    app.stop().await;
}

/// `otactl rollout create` builds the server's own request type: a spec file with a
/// field the API does not know is refused before anything is sent (the configured
/// server is a closed port), naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otactl_refuses_a_rollout_spec_the_api_would_refuse() {
    let app = spawn_app().await;
    let config = app.dir.path().join("otactl.toml");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    std::fs::write(
        &config,
        format!("url = \"{unreachable}\"\ntoken = \"{}\"\n", app.admin_token),
    )
    .unwrap();
    let spec = app.dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"phases": [{"name": "all", "percent": 100}], "rate_limit": {"maximum_per_mnute": 5}}"#,
    )
    .unwrap();
    let (ok, _, stderr) = tokio::task::block_in_place(|| {
        otactl(
            &app,
            &config,
            &[
                "rollout",
                "create",
                "--name",
                "typo",
                "--release",
                "rel_0000000000000000",
                "--spec",
                spec.to_str().unwrap(),
            ],
        )
    });
    assert!(!ok, "a misspelt field must be refused");
    assert!(
        stderr.contains("rate_limit") && stderr.contains("maximum_per_mnute"),
        "the refusal names the field: {stderr}"
    );
    assert!(
        !stderr.contains("connect"),
        "refused before sending: {stderr}"
    );
    app.stop().await;
}
