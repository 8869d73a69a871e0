//! The web API, endpoint by endpoint: success and bad input, against both backends.

use crate::both_backends;
use crate::helpers::{
    checkin, device_key, signed_checkin, spawn_app, spawn_app_with, unique, Backend, Options,
    TestApp,
};
use ota_core::encoding::Sha256Digest;
use ota_core::envelope::Envelope;
use ota_core::metadata::{
    parse_document, to_payload, DirectorMetadata, Role, TargetImage, TargetsMetadata,
};
use ota_core::time::Timestamp;
use serde_json::{json, Value};

async fn app(backend: Backend, options: Options) -> Option<TestApp> {
    spawn_app_with(backend, options).await
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let app = spawn_app().await;
    let (status, body) = app.get("/healthz", "").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.get("/readyz", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["database"], "ok");
    assert_eq!(body["broker"], "disabled");
    let (status, _) = app.get("/api/v1/images", &app.read_token).await;
    assert_eq!(status, 200);
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
        metrics.contains("ota_http_requests_total"),
        "metrics must count requests: {metrics}"
    );
    // Histograms, not summaries: buckets add up across replicas.
    assert!(
        metrics.contains("ota_http_request_duration_seconds_bucket{")
            && metrics.contains("le=\"0.005\"")
            && metrics.contains("ota_http_request_duration_seconds_count{"),
        "request durations must be a histogram: {metrics}"
    );
    assert!(
        !metrics.contains("quantile="),
        "no summary quantiles: {metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn openapi_document_is_served_valid_and_every_route_exists() {
    let app = spawn_app().await;
    let (status, doc) = app.get("/api/v1/openapi.json", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        ota_server::api::openapi::validate(&doc),
        Vec::<String>::new()
    );
    // An independent OpenAPI 3.1 implementation must read it too, with every route.
    let spec = oas3::from_json(doc.to_string())
        .unwrap_or_else(|e| panic!("oas3 must parse the document as OpenAPI 3.1: {e}"));
    let paths = spec.paths.unwrap_or_default();
    for (method, path) in ota_server::api::openapi::documented_routes() {
        let item = paths
            .get(&path)
            .unwrap_or_else(|| panic!("oas3 sees no path {path}"));
        let operation = match method.as_str() {
            "get" => item.get.as_ref(),
            "post" => item.post.as_ref(),
            "put" => item.put.as_ref(),
            "delete" => item.delete.as_ref(),
            _ => None,
        };
        assert!(operation.is_some(), "oas3 sees no {method} {path}");
    }
    for (method, path) in ota_server::api::openapi::documented_routes() {
        let concrete = path
            .replace("{id}", "x")
            .replace("{sha256}", &"0".repeat(64));
        let request = match method.as_str() {
            "get" => app.http.get(app.url(&concrete)),
            "post" => app.http.post(app.url(&concrete)),
            "put" => app.http.put(app.url(&concrete)),
            "delete" => app.http.delete(app.url(&concrete)),
            other => panic!("undocumented method {other}"),
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status != 405 && body["type"] != "urn:ota:problem:no-route",
            "{method} {path} is documented but not routed ({status} {body})"
        );
    }
    let (status, body) = app.get("/api/v1/nothing-here", &app.admin_token).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (404, Some("urn:ota:problem:no-route"))
    );
    let response = app
        .http
        .delete(app.url("/api/v1/images"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    app.stop().await;
}

#[tokio::test]
async fn tokens_and_scopes_are_enforced() {
    let app = spawn_app().await;
    let (status, body) = app.get("/api/v1/images", "").await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, _) = app.get("/api/v1/images", "ota_not-a-real-token").await;
    assert_eq!(status, 401);
    let (status, body) = app
        .post("/api/v1/vehicles", &app.read_token, &json!({}))
        .await;
    assert_eq!(status, 403, "read cannot provision: {body}");
    assert!(body["detail"].as_str().unwrap().contains("admin"));
    let (status, _) = app
        .post("/api/v1/releases", &app.rollout_token, &json!({}))
        .await;
    assert_eq!(status, 403, "rollout:write cannot create releases");
    let (status, _) = app.get("/api/v1/audit", &app.read_token).await;
    assert_eq!(status, 403, "the audit log is for admins");
    app.stop().await;
}

async fn images(backend: Backend) {
    let Some(app) = app(
        backend,
        Options {
            max_image_bytes: Some(4096),
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let bytes = b"firmware".repeat(100);
    let image = app.upload("hw-a", "1.0.0", bytes.clone()).await;
    assert_eq!(
        image["sha256"],
        Sha256Digest::of(&bytes).to_hex(),
        "SHA-256 computed while streaming"
    );
    assert_eq!(image["length"], 800);
    assert_eq!(image["name"], "hw-a-1.0.0");
    let id = image["id"].as_str().unwrap();
    let (status, got) = app
        .get(&format!("/api/v1/images/{id}"), &app.read_token)
        .await;
    assert_eq!((status, &got), (200, &image));
    let (status, list) = app
        .get("/api/v1/images?hardware_id=hw-a", &app.read_token)
        .await;
    assert_eq!((status, list["items"].as_array().unwrap().len()), (200, 1));
    let blob = app
        .dir
        .path()
        .join("blobs/sha256")
        .join(Sha256Digest::of(&bytes).to_hex());
    assert_eq!(
        std::fs::read(blob).unwrap(),
        bytes,
        "stored content-addressed"
    );

    let upload = |q: &str| format!("/api/v1/images?{q}");
    let cases: Vec<(String, &str, Vec<u8>, u16, &str)> = vec![
        (
            upload("hardware_id=hw-a&version=1.0.0"),
            "application/octet-stream",
            b"other".to_vec(),
            409,
            "conflict",
        ),
        (
            upload("hardware_id=hw-a&version=2.0.0"),
            "application/octet-stream",
            vec![0u8; 5000],
            413,
            "payload-too-large",
        ),
        (
            upload("hardware_id=hw-a&version=2.0.0"),
            "text/plain",
            b"x".to_vec(),
            415,
            "unsupported-media-type",
        ),
        (
            upload("hardware_id=hw-a"),
            "application/octet-stream",
            b"x".to_vec(),
            400,
            "bad-request",
        ),
        (
            upload("hardware_id=hw-a&version=2.0.0&colour=red"),
            "application/octet-stream",
            b"x".to_vec(),
            400,
            "bad-request",
        ),
        (
            upload("hardware_id=hw%2Fa&version=2.0.0"),
            "application/octet-stream",
            b"x".to_vec(),
            422,
            "validation",
        ),
        (
            upload("hardware_id=hw-a&version=3.0.0"),
            "application/octet-stream",
            vec![],
            422,
            "validation",
        ),
    ];
    for (path, content_type, body, status, kind) in cases {
        let (got, problem) = app
            .post_raw(&path, &app.admin_token, content_type, body)
            .await;
        assert_eq!(got, status, "{path} ({content_type}): {problem}");
        assert_eq!(
            problem["type"],
            format!("urn:ota:problem:{kind}"),
            "{path}: {problem}"
        );
        assert!(
            !problem["detail"].as_str().unwrap_or("").is_empty(),
            "problems say what was wrong"
        );
    }
    let (status, problem) = app.get("/api/v1/images/not-an-id", &app.read_token).await;
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["field"], "image id");
    let (status, _) = app
        .get("/api/v1/images/img_0123456789abcdef", &app.read_token)
        .await;
    assert_eq!(status, 404);
    let tmp = std::fs::read_dir(app.dir.path().join("blobs/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "refused uploads leave no temporary files");
    app.stop().await;
}
both_backends!(images_upload_list_get_and_bad_input, images);

async fn releases(backend: Backend) {
    let Some(app) = app(
        backend,
        Options {
            max_json_bytes: Some(2048),
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let a = app.upload("hw-a", "2.0.0", b"aaaa".repeat(10)).await;
    let b = app.upload("hw-b", "2.0.0", b"bbbb".repeat(10)).await;
    let a2 = app.upload("hw-a", "2.0.1", b"cccc".repeat(10)).await;
    let (status, release) = app
        .post("/api/v1/releases", &app.admin_token, &json!({ "name": "r-2", "version": "2.0.0", "security_version": 4, "images": [a["id"], b["id"]] }))
        .await;
    assert_eq!(status, 201, "{release}");
    assert_eq!(release["signed_by"], "server");
    assert_eq!(release["targets_version"], 1);
    let envelope = serde_json::to_vec(&release["targets"]).unwrap();
    let state = ota_server::signing::ServerKeys::load(&app.dir.path().join("dev-keys")).unwrap();
    let targets = state
        .verify_targets(&envelope)
        .expect("server-signed targets verify against root");
    assert_eq!(targets.targets.len(), 2);
    assert_eq!(
        targets
            .targets
            .get(&"hw-a-2.0.0".to_owned())
            .unwrap()
            .security_version,
        4
    );

    // Pre-signed offline with the targets key: accepted after verification.
    let key = ota_server::signing::read_key_file(&app.dir.path().join("dev-keys/targets.key.json"))
        .unwrap();
    let image = TargetImage {
        hardware_id: "hw-a".into(),
        version: "2.0.1".into(),
        security_version: 5,
        length: 40,
        sha256: Sha256Digest::parse(a2["sha256"].as_str().unwrap()).unwrap(),
    };
    let expires = Timestamp::from_datetime(chrono::Utc::now()).plus_seconds(86_400);
    let (status, current) = app.get("/api/v1/targets", &app.read_token).await;
    assert_eq!((status, &current["version"]), (200, &json!(1)), "{current}");
    assert_eq!(
        current["envelope"], release["targets"],
        "the latest targets are release 1's"
    );
    let previous: Vec<(String, TargetImage)> = targets.targets.0.clone().into_iter().collect();
    // Targets are cumulative: an offline signer must keep every released image listed.
    let sign_only_new = |version: u64, key: &ota_core::key::SigningKey| -> Value {
        let metadata =
            TargetsMetadata::new(version, expires, [("hw-a-2.0.1".to_owned(), image.clone())]);
        serde_json::from_slice(
            &Envelope::sign(Role::Targets.payload_type(), to_payload(&metadata), &[key])
                .to_json_bytes(),
        )
        .unwrap()
    };
    let sign = |version: u64, key: &ota_core::key::SigningKey| -> Value {
        let mut entries = previous.clone();
        entries.push(("hw-a-2.0.1".to_owned(), image.clone()));
        let metadata = TargetsMetadata::new(version, expires, entries);
        serde_json::from_slice(
            &Envelope::sign(Role::Targets.payload_type(), to_payload(&metadata), &[key])
                .to_json_bytes(),
        )
        .unwrap()
    };
    let body = |targets: Value| json!({ "name": unique("off-"), "version": "2.0.1", "security_version": 5, "images": [a2["id"]], "targets": targets });
    let (status, problem) = app
        .post(
            "/api/v1/releases",
            &app.admin_token,
            &body(sign_only_new(2, &key)),
        )
        .await;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (422, Some("targets.targets")),
        "targets that drop released images must be refused: {problem}"
    );
    let (status, offline) = app
        .post("/api/v1/releases", &app.admin_token, &body(sign(2, &key)))
        .await;
    assert_eq!(
        (status, offline["signed_by"].as_str()),
        (201, Some("offline")),
        "{offline}"
    );
    let (_, current) = app.get("/api/v1/targets", &app.read_token).await;
    assert_eq!(current["version"], 2);
    assert_eq!(
        current["targets"].as_object().map(|t| t.len()),
        Some(3),
        "the newest targets list every released image: {current}"
    );
    let (status, problem) = app
        .post(
            "/api/v1/releases",
            &app.admin_token,
            &body(sign(3, &device_key())),
        )
        .await;
    assert_eq!(
        status, 422,
        "a targets envelope signed by a key root does not trust must be refused: {problem}"
    );
    assert_eq!(problem["errors"][0]["field"], "targets");
    let (status, problem) = app
        .post("/api/v1/releases", &app.admin_token, &body(sign(2, &key)))
        .await;
    assert_eq!(status, 422, "targets versions must grow: {problem}");

    let (status, list) = app.get("/api/v1/releases", &app.read_token).await;
    assert_eq!((status, list["items"].as_array().unwrap().len()), (200, 2));
    let (status, got) = app
        .get(
            &format!("/api/v1/releases/{}", release["id"].as_str().unwrap()),
            &app.read_token,
        )
        .await;
    assert_eq!((status, &got["id"]), (200, &release["id"]));

    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({ "name": "r-2", "version": "2", "security_version": 1, "images": [b["id"]] }),
            409,
            "duplicate name",
        ),
        (
            json!({ "name": "x", "version": "2", "security_version": 1, "images": [a["id"], a2["id"]] }),
            422,
            "two images for one hardware id",
        ),
        (
            json!({ "name": "x", "version": "2", "security_version": 1, "images": [] }),
            422,
            "no images",
        ),
        (
            json!({ "name": "x", "version": "2", "security_version": 1, "images": ["img_0123456789abcdef"] }),
            422,
            "unknown image",
        ),
        (
            json!({ "name": "x", "version": "2", "security_version": 1, "images": ["bad"] }),
            422,
            "malformed id",
        ),
        (
            json!({ "name": "x", "version": "2", "security_version": -1, "images": [a["id"]] }),
            422,
            "negative security_version",
        ),
        (
            json!({ "name": "x", "version": "2", "security_version": 1, "images": [a["id"]], "colour": 1 }),
            422,
            "unknown field",
        ),
        (
            json!({ "name": "x", "version": "2", "images": [a["id"]] }),
            422,
            "missing field",
        ),
    ];
    for (request, status, what) in cases {
        let (got, problem) = app
            .post("/api/v1/releases", &app.admin_token, &request)
            .await;
        assert_eq!(got, status, "{what}: {problem}");
    }
    let (_, problem) = app
        .post("/api/v1/releases", &app.admin_token, &json!({ "name": "x", "version": "2", "security_version": 1, "images": [a["id"]], "colour": 1 }))
        .await;
    assert_eq!(
        problem["errors"][0]["field"], "colour",
        "unknown fields are named: {problem}"
    );
    let (status, problem) = app
        .post_raw(
            "/api/v1/releases",
            &app.admin_token,
            "application/json",
            b"{\"name\": ".to_vec(),
        )
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (400, Some("urn:ota:problem:malformed-json"))
    );
    let (status, _) = app
        .post_raw(
            "/api/v1/releases",
            &app.admin_token,
            "text/plain",
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(status, 415);
    let huge =
        json!({ "name": "x".repeat(3000), "version": "1", "security_version": 1, "images": [] });
    let (status, problem) = app.post("/api/v1/releases", &app.admin_token, &huge).await;
    assert_eq!(status, 413, "oversize JSON bodies: {problem}");
    app.stop().await;
}
both_backends!(
    releases_server_signed_offline_signed_and_bad_input,
    releases
);

async fn vehicles(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let key = device_key();
    let vehicle = app
        .register_vehicle("veh-a", &key, "hw-a", &["eu", "beta"])
        .await;
    assert_eq!(vehicle["ecus"][0]["hardware_id"], "hw-a");
    app.register_vehicle("veh-b", &device_key(), "hw-b", &["us"])
        .await;
    let (status, list) = app.get("/api/v1/vehicles?tag=eu", &app.read_token).await;
    assert_eq!((status, list["items"].as_array().unwrap().len()), (200, 1));
    let (_, list) = app
        .get("/api/v1/vehicles?hardware_id=hw-b", &app.read_token)
        .await;
    assert_eq!(list["items"][0]["id"], "veh-b");
    let (status, detail) = app.get("/api/v1/vehicles/veh-a", &app.read_token).await;
    assert_eq!(status, 200);
    assert_eq!(detail["deployments"], json!([]));
    assert_eq!(detail["last_seen_at"], Value::Null);

    let pk = key.public_key().to_hex();
    let ecus = json!([{ "ecu": "main", "hardware_id": "hw-a" }]);
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({ "id": "veh-a", "public_key": pk, "ecus": ecus }),
            409,
            "id",
        ),
        (
            json!({ "id": "veh/../x", "public_key": pk, "ecus": ecus }),
            422,
            "id",
        ),
        (
            json!({ "id": "veh-c", "public_key": "zz", "ecus": ecus }),
            422,
            "public_key",
        ),
        (
            json!({ "id": "veh-c", "public_key": "00".repeat(32), "ecus": ecus }),
            422,
            "public_key",
        ),
        (
            json!({ "id": "veh-c", "public_key": pk, "ecus": [] }),
            422,
            "ecus",
        ),
        (
            json!({ "id": "veh-c", "public_key": pk, "ecus": [{ "ecu": "m", "hardware_id": "a" }, { "ecu": "m", "hardware_id": "b" }] }),
            422,
            "ecus[1].ecu",
        ),
        (
            json!({ "id": "veh-c", "public_key": pk, "ecus": ecus, "vin": "WVW123" }),
            422,
            "vin",
        ),
    ];
    for (request, status, field) in cases {
        let (got, problem) = app
            .post("/api/v1/vehicles", &app.admin_token, &request)
            .await;
        assert_eq!(got, status, "{request}: {problem}");
        if status == 422 {
            assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        }
    }
    let (status, _) = app.get("/api/v1/vehicles/nobody", &app.read_token).await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/api/v1/vehicles?limit=0", &app.read_token).await;
    assert_eq!(status, 422);
    app.stop().await;
}
both_backends!(vehicles_register_list_get_and_bad_input, vehicles);

fn registration(id: &str, hardware_id: &str) -> Value {
    json!({ "id": id, "public_key": device_key().public_key().to_hex(),
            "ecus": [{ "ecu": "main", "hardware_id": hardware_id }, { "ecu": "tcu", "hardware_id": "hw-tcu" }],
            "tags": ["bulk"] })
}

async fn count_with_hardware(app: &TestApp, hardware_id: &str) -> usize {
    let (status, list) = app
        .get(
            &format!("/api/v1/vehicles?hardware_id={hardware_id}&limit=1000"),
            &app.read_token,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    list["items"].as_array().unwrap().len()
}

async fn vehicles_bulk(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let path = "/api/v1/vehicles:bulk";
    let prefix = unique("bulk-");
    let fleet: Vec<Value> = (0..1000)
        .map(|i| registration(&format!("{prefix}-{i}"), "hw-bulk"))
        .collect();
    let body = json!({ "vehicles": fleet });

    // Only the admin scope registers vehicles.
    for token in [&app.read_token, &app.rollout_token] {
        let (status, problem) = app.post(path, token, &body).await;
        assert_eq!(status, 403, "{problem}");
    }
    let (status, _) = app.post(path, "", &body).await;
    assert_eq!(status, 401);
    // A refusal answered before the large body was read says the connection is done, so
    // a pooling client does not send its next request into a socket the server closed.
    let refused = app
        .http
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    assert_eq!(count_with_hardware(&app, "hw-bulk").await, 0);

    let (status, answer) = app.post(path, &app.admin_token, &body).await;
    assert_eq!(
        (status, answer["registered"].as_u64()),
        (201, Some(1000)),
        "{answer}"
    );
    assert_eq!(count_with_hardware(&app, "hw-bulk").await, 1000);
    let (_, one) = app
        .get(&format!("/api/v1/vehicles/{prefix}-999"), &app.read_token)
        .await;
    assert_eq!(one["ecus"].as_array().unwrap().len(), 2, "{one}");
    assert_eq!(one["tags"], json!(["bulk"]));
    let (_, audit) = app.get("/api/v1/audit?limit=50", &app.admin_token).await;
    let bulk_entries: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "vehicle.register_bulk")
        .collect();
    assert_eq!(
        bulk_entries.len(),
        1,
        "one audit entry per bulk call: {audit}"
    );

    // A bad entry anywhere refuses the whole request, naming its index and field.
    let fresh = unique("bulk2-");
    let entries = |bad_at: usize, bad: Value| -> Value {
        let mut list: Vec<Value> = (0..20)
            .map(|i| registration(&format!("{fresh}-{i}"), "hw-bulk2"))
            .collect();
        list[bad_at] = bad;
        json!({ "vehicles": list })
    };
    let pk = device_key().public_key().to_hex();
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            entries(
                7,
                json!({ "id": "x", "public_key": "zz", "ecus": [{ "ecu": "m", "hardware_id": "h" }] }),
            ),
            422,
            "vehicles[7].public_key",
        ),
        (
            entries(
                12,
                json!({ "id": "bad/id", "public_key": pk, "ecus": [{ "ecu": "m", "hardware_id": "h" }] }),
            ),
            422,
            "vehicles[12].id",
        ),
        (
            entries(3, json!({ "id": "y", "public_key": pk, "ecus": [] })),
            422,
            "vehicles[3].ecus",
        ),
        (
            entries(5, registration(&format!("{fresh}-2"), "hw-bulk2")),
            422,
            "vehicles[5].id",
        ),
        (
            entries(
                9,
                json!({ "id": "z", "public_key": pk, "ecus": [], "vin": "1" }),
            ),
            422,
            "vehicles[9].vin",
        ),
        (json!({ "vehicles": [] }), 422, "vehicles"),
    ];
    for (request, status, field) in cases {
        let (got, problem) = app.post(path, &app.admin_token, &request).await;
        assert_eq!(got, status, "{problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    // An id that is already registered: 409 naming the entry.
    let (status, problem) = app
        .post(
            path,
            &app.admin_token,
            &entries(15, registration(&format!("{prefix}-4"), "hw-bulk2")),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("vehicles[15].id"),
        "{problem}"
    );
    assert_eq!(
        count_with_hardware(&app, "hw-bulk2").await,
        0,
        "a refused bulk request registers nothing"
    );
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({ "id": format!("m{i}"), "public_key": pk, "ecus": [{ "ecu": "m", "hardware_id": "h" }] }))
        .collect();
    let (status, problem) = app
        .post(path, &app.admin_token, &json!({ "vehicles": too_many }))
        .await;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (422, Some("vehicles")),
        "{problem}"
    );
    app.stop().await;
}
both_backends!(vehicles_bulk_registration_all_or_nothing, vehicles_bulk);

async fn rollouts(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let key = device_key();
    app.register_vehicle("veh-r1", &key, "hw-a", &[]).await;
    let (_, release, rollout) = app
        .release_and_rollout("hw-a", json!([{ "name": "all", "percent": 100 }]))
        .await;
    let id = rollout["id"].as_str().unwrap().to_owned();
    assert_eq!(rollout["state"], "draft");
    let act = |action: &'static str| {
        let path = format!("/api/v1/rollouts/{id}/{action}");
        let app = &app;
        async move {
            let response = app
                .http
                .post(app.url(&path))
                .bearer_auth(&app.rollout_token)
                .send()
                .await
                .unwrap();
            crate::helpers::decode(response).await
        }
    };
    let (status, problem) = act("pause").await;
    assert_eq!(status, 409, "a draft cannot be paused: {problem}");
    assert_eq!(act("start").await.1["state"], "running");
    assert_eq!(act("pause").await.1["state"], "paused");
    assert_eq!(act("resume").await.1["state"], "running");

    // The director path (as the MQTT gateway drives it): a signed check-in gets a signed
    // assignment of the release's image.
    let engine = &app.state;
    let bytes = signed_checkin(&key, &checkin("veh-r1", Some(("1.0.0", b"old")), 0));
    let directive = engine
        .engine
        .handle_checkin("veh-r1", &bytes, ota_server::engine::wall_clock_ms())
        .await
        .expect("a registered vehicle's check-in is accepted");
    let envelope = Envelope::parse(&directive).unwrap();
    let metadata: DirectorMetadata = parse_document(&envelope.payload).unwrap();
    assert_eq!(
        metadata.assignments.len(),
        1,
        "a vehicle in a 100% phase is assigned"
    );
    assert_eq!(
        metadata.assignments[0].image.name,
        release["images"][0]["name"].as_str().unwrap()
    );
    let forged = signed_checkin(&device_key(), &checkin("veh-r1", None, 0));
    let rejected = engine
        .engine
        .handle_checkin("veh-r1", &forged, ota_server::engine::wall_clock_ms())
        .await
        .unwrap_err();
    assert_eq!(
        rejected.label(),
        "bad_signature",
        "a check-in signed by another key is refused for its signature: {rejected}"
    );
    let mut replayed = checkin("veh-r1", None, 0);
    replayed.sent_at = replayed.sent_at.plus_seconds(-3600);
    let rejected = engine
        .engine
        .handle_checkin(
            "veh-r1",
            &signed_checkin(&key, &replayed),
            ota_server::engine::wall_clock_ms(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        rejected.label(),
        "stale",
        "an hour-old check-in is a replay: {rejected}"
    );
    // Future-dated beyond the window: refused the same way, so a check-in signed ahead
    // of time cannot be held back and replayed later.
    let mut early = checkin("veh-r1", None, 0);
    early.sent_at = early.sent_at.plus_seconds(3600);
    let rejected = engine
        .engine
        .handle_checkin(
            "veh-r1",
            &signed_checkin(&key, &early),
            ota_server::engine::wall_clock_ms(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        rejected.label(),
        "stale",
        "a check-in dated an hour ahead is refused: {rejected}"
    );
    let rejected = engine
        .engine
        .handle_checkin("veh-r1", &bytes, ota_server::engine::wall_clock_ms())
        .await
        .unwrap_err();
    assert_eq!(
        rejected.label(),
        "replayed",
        "the same signed check-in twice is a replay: {rejected}"
    );
    let other_topic = signed_checkin(&key, &checkin("veh-r1", None, 0));
    let rejected = engine
        .engine
        .handle_checkin(
            "veh-other",
            &other_topic,
            ota_server::engine::wall_clock_ms(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        rejected.label(),
        "topic_mismatch",
        "a check-in for another vehicle's topic: {rejected}"
    );

    let (status, status_body) = app
        .get(&format!("/api/v1/rollouts/{id}/status"), &app.read_token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(status_body["phases"][0]["assigned"], 1, "{status_body}");
    assert_eq!(status_body["phases"][0]["eligible"], 1);
    assert_eq!(status_body["rollout"]["breaker_state"], "closed");
    let (_, detail) = app.get("/api/v1/vehicles/veh-r1", &app.read_token).await;
    assert_eq!(
        detail["deployments"][0]["status"], "assigned",
        "deployment history: {detail}"
    );
    assert_eq!(detail["ecus"][0]["installed_version"], "1.0.0");

    assert_eq!(act("abort").await.1["state"], "aborted");
    let (_, detail) = app.get("/api/v1/vehicles/veh-r1", &app.read_token).await;
    assert_eq!(
        detail["deployments"][0]["status"], "cancelled",
        "abort cancels vehicles not yet installing"
    );
    assert_eq!(act("resume").await.0, 409);
    assert_eq!(act("rollback").await.1["state"], "rolled_back");
    let (status, list) = app
        .get("/api/v1/rollouts?state=rolled_back", &app.read_token)
        .await;
    assert_eq!((status, list["items"].as_array().unwrap().len()), (200, 1));
    let (status, _) = app
        .get("/api/v1/rollouts?state=bogus", &app.read_token)
        .await;
    assert_eq!(status, 422);
    let (status, jobs) = app
        .get(
            &format!("/api/v1/delta-jobs?rollout_id={id}"),
            &app.read_token,
        )
        .await;
    assert_eq!(
        (status, jobs["items"].as_array().map(Vec::len)),
        (200, Some(0)),
        "no source image bytes held: nothing to build"
    );

    let base = json!({ "name": "bad", "release_id": release["id"], "phases": [{ "name": "a", "percent": 10 }] });
    let with = |patch: Value| {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases: Vec<(Value, &str)> = vec![
        (with(json!({ "phases": [] })), "phases"),
        (
            with(
                json!({ "phases": [{ "name": "a", "percent": 50 }, { "name": "b", "percent": 10 }] }),
            ),
            "phases[1].percent",
        ),
        (
            with(json!({ "phases": [{ "name": "a", "percent": 101 }] })),
            "phases[0].percent",
        ),
        (
            with(json!({ "rate_limit": { "maximum_per_minute": 0 } })),
            "rate_limit.maximum_per_minute",
        ),
        (
            with(json!({ "abort_criteria": { "threshold_percentage": 150 } })),
            "abort_criteria.threshold_percentage",
        ),
        (
            with(json!({ "abort_criteria": { "action": "explode" } })),
            "abort_criteria.action",
        ),
        (
            with(json!({ "maintenance_window": { "start_utc": "25:00", "end_utc": "01:00" } })),
            "maintenance_window.start_utc",
        ),
        (
            with(json!({ "release_id": "rel_0123456789abcdef" })),
            "release_id",
        ),
        (with(json!({ "release_id": 7 })), "release_id"),
        (
            with(json!({ "selector": { "colour": ["red"] } })),
            "selector.colour",
        ),
    ];
    for (body, field) in cases {
        let (status, problem) = app
            .post("/api/v1/rollouts", &app.rollout_token, &body)
            .await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let (status, _) = app.get("/api/v1/rollouts/ro_zz", &app.read_token).await;
    assert_eq!(status, 422);
    let (status, _) = app
        .post(
            "/api/v1/rollouts/ro_0123456789abcdef/start",
            &app.rollout_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);

    let (status, audit) = app.get("/api/v1/audit?limit=100", &app.admin_token).await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for expected in [
        "rollout.create",
        "rollout.start",
        "rollout.pause",
        "rollout.resume",
        "rollout.abort",
        "rollout.rollback",
        "release.create",
        "image.upload",
        "vehicle.register",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} must be audited: {actions:?}"
        );
    }
    let start = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "rollout.start")
        .unwrap();
    assert_eq!(start["actor"], "test-rollouts");
    assert!(
        start["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "audit entries carry the request id"
    );
    app.stop().await;
}
both_backends!(rollouts_lifecycle_status_director_and_audit, rollouts);

async fn vehicle_metadata(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let key = device_key();
    app.register_vehicle("veh-meta", &key, "hw-a", &[]).await;
    let get = |path: &str, authorised: bool| {
        let mut request = app.http.get(app.url(path));
        if authorised {
            request = request.header(
                "authorization",
                crate::helpers::vehicle_credential("veh-meta", &key, "GET", path),
            );
        }
        request.send()
    };
    let response = get("/v1/metadata/targets.json", true).await.unwrap();
    assert_eq!(response.status().as_u16(), 404, "no release, no targets");
    let image = app.upload("hw-a", "3.0.0", b"meta".repeat(8)).await;
    let (status, release) = app
        .post("/api/v1/releases", &app.admin_token, &json!({ "name": "meta", "version": "3.0.0", "security_version": 1, "images": [image["id"]] }))
        .await;
    assert_eq!(status, 201, "{release}");

    let response = get("/v1/metadata/targets.json", false).await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        401,
        "vehicles must authenticate"
    );
    let response = get("/v1/metadata/targets.json", true).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.bytes().await.unwrap().to_vec();
    let envelope = Envelope::parse(&bytes).expect("the exact signed envelope");
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap(),
        release["targets"],
        "the newest targets envelope is served"
    );
    assert_eq!(envelope.payload_type, Role::Targets.payload_type());

    let root = get("/v1/metadata/root/1.json", true).await.unwrap();
    assert_eq!(root.status().as_u16(), 200);
    let root = root.bytes().await.unwrap().to_vec();
    let anchor = ota_core::trust::TrustedState::from_anchor(&root).expect("root v1 verifies");
    assert_eq!(anchor.root().version(), 1);
    assert_eq!(
        get("/v1/metadata/root/2.json", true)
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        get("/v1/metadata/root/two.json", true)
            .await
            .unwrap()
            .status()
            .as_u16(),
        422
    );
    assert_eq!(
        get("/v1/metadata/root/1.json", false)
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    app.stop().await;
}
both_backends!(vehicle_metadata_targets_and_root_chain, vehicle_metadata);

async fn blobs(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let key = device_key();
    app.register_vehicle("veh-blob", &key, "hw-a", &[]).await;
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let image = app.upload("hw-a", "9.0.0", bytes.clone()).await;
    let path = format!("/v1/blobs/{}", image["sha256"].as_str().unwrap());
    let full = app
        .http
        .get(app.url(&path))
        .bearer_auth(&app.read_token)
        .send()
        .await
        .unwrap();
    assert_eq!(full.status().as_u16(), 200);
    let etag = full.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(full.bytes().await.unwrap().to_vec(), bytes);
    let part = app
        .http
        .get(app.url(&path))
        .bearer_auth(&app.read_token)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 100-199/1000");
    assert_eq!(
        part.bytes().await.unwrap().to_vec(),
        bytes[100..200].to_vec()
    );
    let resumed = app
        .http
        .get(app.url(&path))
        .bearer_auth(&app.read_token)
        .header("range", "bytes=900-")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status().as_u16(), 206);
    assert_eq!(resumed.headers()["content-range"], "bytes 900-999/1000");
    let tail = resumed.bytes().await.unwrap().to_vec();
    assert!(
        tail == bytes[900..],
        "a resumed download must send the blob's own bytes from the offset"
    );
    let mut joined = bytes[..900].to_vec();
    joined.extend_from_slice(&tail);
    assert_eq!(
        Sha256Digest::of(&joined).to_hex(),
        image["sha256"].as_str().unwrap(),
        "the first 900 bytes plus the resumed tail are the image"
    );
    let stale = app
        .http
        .get(app.url(&path))
        .bearer_auth(&app.read_token)
        .header("range", "bytes=900-")
        .header("if-range", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(
        stale.status().as_u16(),
        200,
        "If-Range mismatch must send the whole blob"
    );
    assert!(
        stale.bytes().await.unwrap() == bytes,
        "If-Range mismatch must send the whole blob from its first byte"
    );
    let outside = app
        .http
        .get(app.url(&path))
        .bearer_auth(&app.read_token)
        .header("range", "bytes=5000-")
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status().as_u16(), 416);
    assert_eq!(outside.headers()["content-range"], "bytes */1000");
    let (status, _) =
        crate::helpers::decode(app.http.get(app.url(&path)).send().await.unwrap()).await;
    assert_eq!(status, 401, "anonymous downloads are refused");
    let old = ota_core::credential::SignedRequest::new(
        "veh-blob",
        chrono::Utc::now().timestamp() - 3600,
        "GET",
        &path,
    )
    .unwrap()
    .sign(&key);
    let (status, problem) = crate::helpers::decode(
        app.http
            .get(app.url(&path))
            .header("authorization", old)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "stale vehicle credentials are refused");
    assert_eq!(problem["reason"], "outside_window", "{problem}");
    let forged = crate::helpers::vehicle_credential("veh-blob", &device_key(), "GET", &path);
    let (status, problem) = crate::helpers::decode(
        app.http
            .get(app.url(&path))
            .header("authorization", forged)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "a credential signed by another key is refused");
    assert_eq!(problem["reason"], "bad_signature", "{problem}");
    let (status, _) = app.get(&path, &app.read_token).await;
    assert_eq!(status, 200, "operators with the read scope may download");
    let (status, _) = app
        .get(&format!("/v1/blobs/{}", "0".repeat(64)), &app.read_token)
        .await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/v1/blobs/XYZ", &app.read_token).await;
    assert_eq!(status, 422);
    app.stop().await;
}
both_backends!(blobs_range_if_range_and_credential_refusals, blobs);

#[tokio::test]
async fn readyz_reports_an_unreachable_broker() {
    // Port 9 (discard) on localhost is closed on test machines: the broker is unreachable.
    let options = Options {
        mqtt_url_unchecked: Some("mqtt://127.0.0.1:9".to_owned()),
        ..Options::default()
    };
    let app = spawn_app_with(Backend::Sqlite, options).await.unwrap();
    let response = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        503,
        "not ready without the broker"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["broker"].as_str(), body["database"].as_str()),
        (Some("disconnected"), Some("ok"))
    );
    app.stop().await;
}

async fn delta_jobs(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let key = device_key();
    app.register_vehicle("veh-d", &key, "hw-d", &[]).await;
    // Incompressible image bytes (as machine code mostly is), and an old version that
    // differs by a few edits, as adjacent firmware versions do.
    let new: Vec<u8> = (0u32..2048)
        .flat_map(|i| Sha256Digest::of(&i.to_le_bytes()).0)
        .collect();
    let mut old = new.clone();
    old[1000..1008].copy_from_slice(b"OLDBYTES");
    old.drain(30_000..30_100);
    app.upload("hw-d", "1.0.0", old.clone()).await;
    // The vehicle reports the old image installed; the server holds its bytes.
    let c = signed_checkin(&key, &checkin("veh-d", Some(("1.0.0", &old)), 0));
    app.state
        .engine
        .handle_checkin("veh-d", &c, ota_server::engine::wall_clock_ms())
        .await
        .unwrap();
    let image = app.upload("hw-d", "2.0.0", new.clone()).await;
    let (status, release) = app
        .post("/api/v1/releases", &app.admin_token, &json!({ "name": "delta-rel", "version": "2.0.0", "security_version": 1, "images": [image["id"]] }))
        .await;
    assert_eq!(status, 201, "{release}");
    let (status, rollout) = app
        .post("/api/v1/rollouts", &app.admin_token, &json!({ "name": "d", "release_id": release["id"], "phases": [{ "name": "all", "percent": 100 }] }))
        .await;
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_str().unwrap();
    let (status, _) = app
        .post(
            &format!("/api/v1/rollouts/{id}/start"),
            &app.rollout_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let mut jobs = Value::Null;
    for _ in 0..300 {
        let (_, list) = app
            .get(
                &format!("/api/v1/delta-jobs?rollout_id={id}"),
                &app.read_token,
            )
            .await;
        if !matches!(
            list["items"][0]["status"].as_str(),
            Some("queued" | "running") | None
        ) {
            jobs = list["items"].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        jobs.as_array().map(Vec::len),
        Some(1),
        "one build per installed source version: {jobs}"
    );
    assert_eq!(jobs[0]["source_sha256"], Sha256Digest::of(&old).to_hex());
    assert_eq!(jobs[0]["status"], "done", "the delta must be built: {jobs}");
    let (_, status) = app
        .get(&format!("/api/v1/rollouts/{id}/status"), &app.read_token)
        .await;
    assert_eq!(status["delta_jobs"]["done"], 1, "{status}");

    // The vehicle is offered the delta, and the agent's applier turns old into new.
    let c = signed_checkin(&key, &checkin("veh-d", Some(("1.0.0", &old)), 0));
    let directive = app
        .state
        .engine
        .handle_checkin("veh-d", &c, ota_server::engine::wall_clock_ms())
        .await
        .unwrap();
    let envelope = Envelope::parse(&directive).unwrap();
    let metadata: DirectorMetadata = parse_document(&envelope.payload).unwrap();
    let delta = metadata.assignments[0]
        .delta
        .clone()
        .expect("the built delta must be offered");
    assert_eq!(delta.source_sha256, Sha256Digest::of(&old));
    let bytes = app
        .http
        .get(app.url(&format!("/v1/blobs/{}", delta.sha256)))
        .bearer_auth(&app.read_token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    assert_eq!(bytes.len() as u64, delta.length);
    // The server's deltas leave their digests to this signed metadata by default
    // (`[delta] detached_digests`): the applier refuses one without them, and applies
    // it with the delta entry's source and the image's target digest.
    let header = ota_core::delta::ContainerHeader::parse(&bytes).unwrap();
    assert_eq!(
        header.digests, None,
        "a detached-digests container is served"
    );
    let mut rebuilt = Vec::new();
    let refused =
        ota_agent::delta::apply_delta(&bytes[..], std::io::Cursor::new(&old), &mut rebuilt);
    assert!(
        matches!(
            refused,
            Err(ota_agent::delta::ApplyError::Container(
                ota_core::delta::DeltaError::DigestNotKnown { image: "source" }
            ))
        ),
        "{refused:?}"
    );
    assert!(rebuilt.is_empty(), "nothing is written without the digests");
    let known = ota_core::delta::KnownDigests {
        source: Some(delta.source_sha256.0),
        target: Some(metadata.assignments[0].image.sha256.0),
    };
    ota_agent::delta::apply_delta_known(
        &bytes[..],
        std::io::Cursor::new(&old),
        &mut rebuilt,
        &known,
    )
    .expect("the agent applies the server's delta");
    assert_eq!(
        Sha256Digest::of(&rebuilt).to_hex(),
        image["sha256"].as_str().unwrap(),
        "old + delta must be exactly the release's image"
    );
    app.stop().await;
}
both_backends!(delta_jobs_are_enqueued_on_start_and_visible, delta_jobs);

#[tokio::test]
async fn garbage_bodies_never_cause_a_server_error() {
    let app = spawn_app().await;
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"".to_vec()),
        ("application/json", b"null".to_vec()),
        ("application/json", b"[]".to_vec()),
        ("application/json", b"\"text\"".to_vec()),
        ("application/json", b"{\"name\": 1e999}".to_vec()),
        ("application/json", "[".repeat(10_000).into_bytes()),
        ("application/json", b"{\"name\": \"\\ud800\"}".to_vec()),
        ("application/json", vec![0xff, 0xfe, 0x00]),
        ("application/json", b"{} {}".to_vec()),
        (
            "application/json; charset=utf-8",
            b"{\"phases\": [{\"percent\": -1}]}".to_vec(),
        ),
        ("application/x-www-form-urlencoded", b"a=b".to_vec()),
        ("application/octet-stream", b"\x00\x01".to_vec()),
    ];
    let targets = [
        "/api/v1/releases",
        "/api/v1/vehicles",
        "/api/v1/rollouts",
        "/api/v1/images?hardware_id=a&version=1",
        "/api/v1/rollouts/ro_0123456789abcdef/start",
    ];
    for target in targets {
        for (content_type, body) in &bodies {
            let response = app
                .http
                .post(app.url(target))
                .bearer_auth(&app.admin_token)
                .header("content-type", *content_type)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let is_upload =
                target.starts_with("/api/v1/images") && *content_type == "application/octet-stream";
            assert!(
                (400..500).contains(&status) || (is_upload && status == 201),
                "{target} with {content_type} {:?}: got {status}",
                String::from_utf8_lossy(&body[..body.len().min(40)])
            );
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_sheds_load_with_503() {
    let options = Options {
        max_concurrent_requests: Some(1),
        ..Options::default()
    };
    let app = spawn_app_with(Backend::Sqlite, options).await.unwrap();
    // Hold the only slot with an upload whose body does not finish until `tx` drops.
    // Rather than sleeping and hoping the upload got there first, probe until the server
    // sheds a probe while the upload is still held: that 503 can only come from the held
    // slot. A probe that wins the race for the slot is served (200) and may make the
    // upload itself be shed; then the upload is started again.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let (tx, held) = 'held: loop {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        tx.send(Ok(b"start".to_vec())).await.unwrap();
        let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
        let held = tokio::spawn(
            app.http
                .post(app.url("/api/v1/images?hardware_id=a&version=1"))
                .bearer_auth(&app.admin_token)
                .header("content-type", "application/octet-stream")
                .body(body)
                .send(),
        );
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no request was shed while an upload held the only slot"
            );
            let (status, problem) = app.get("/api/v1/images", &app.read_token).await;
            if held.is_finished() {
                let shed = held.await.unwrap().unwrap();
                assert_eq!(
                    shed.status().as_u16(),
                    503,
                    "only shedding ends a held upload early"
                );
                continue 'held;
            }
            match status {
                503 => break 'held (tx, held),
                200 => tokio::task::yield_now().await,
                other => panic!("a probe must be served or shed, got {other}: {problem}"),
            }
        }
    };
    // Liveness and readiness are outside the shedding; a shed request says when to retry.
    for probe in ["/healthz", "/readyz"] {
        let response = app.http.get(app.url(probe)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{probe} must not be shed");
    }
    let shed = app
        .http
        .get(app.url("/api/v1/images"))
        .bearer_auth(&app.read_token)
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status().as_u16(), 503);
    assert_eq!(
        shed.headers()["retry-after"],
        "1",
        "503 carries Retry-After"
    );
    drop(tx);
    let finished = held.await.unwrap().unwrap();
    assert_eq!(
        finished.status().as_u16(),
        201,
        "the held upload completes once its body ends"
    );
    let (status, _) = app.get("/api/v1/images", &app.read_token).await;
    assert_eq!(
        status, 200,
        "capacity is back after the slow request finished"
    );
    app.stop().await;
}

/// The answer to a POST whose body sends `first` and then nothing while the returned
/// sender lives: only a server-side timeout can answer it.
async fn stalled_post(
    app: &TestApp,
    path: &str,
    content_type: &str,
    first: &[u8],
) -> (
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    (u16, Value),
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.try_send(Ok(first.to_vec())).unwrap();
    let request = app
        .http
        .post(app.url(path))
        .bearer_auth(&app.admin_token)
        .header("content-type", content_type)
        .body(reqwest::Body::wrap_stream(tokio_stream_from(rx)))
        .send();
    // A bound only against a hang when the timeout is broken, far above the test's.
    let response = tokio::time::timeout(std::time::Duration::from_secs(60), request)
        .await
        .expect("the server must answer a stalled request by itself")
        .expect("an answer, not a dropped connection");
    (tx, crate::helpers::decode(response).await)
}

/// The blob store's files: every stored blob and every temporary file.
fn blob_files(app: &TestApp) -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["sha256", "tmp"] {
        for entry in std::fs::read_dir(app.dir.path().join("blobs").join(dir)).unwrap() {
            files.push(format!(
                "{dir}/{}",
                entry.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_the_timeout_gets_408() {
    let options = Options {
        request_timeout_seconds: Some(1),
        ..Options::default()
    };
    let app = spawn_app_with(Backend::Sqlite, options).await.unwrap();
    // A JSON body that never ends while `tx` lives: nothing but the server's request
    // timeout can answer it, so no sleep and no race decide the outcome.
    let (tx, (status, problem)) = stalled_post(
        &app,
        "/api/v1/releases",
        "application/json",
        br#"{"name": "#,
    )
    .await;
    assert_eq!(status, 408, "{problem}");
    assert_eq!(
        problem["type"], "urn:ota:problem:request-timeout",
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("request_timeout_seconds")),
        "the problem names the setting: {problem}"
    );
    drop(tx);
    let (status, releases) = app.get("/api/v1/releases", &app.read_token).await;
    assert_eq!(status, 200, "the server serves on after a timeout");
    assert_eq!(
        releases["items"],
        json!([]),
        "a timed-out request changes nothing"
    );
    app.stop().await;
}

/// Item 7: an image upload takes as long as its size needs. One that lasts several
/// request timeouts but keeps sending is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_longer_than_the_request_timeout_completes_while_bytes_keep_arriving() {
    let options = Options {
        request_timeout_seconds: Some(1),
        upload_idle_timeout_seconds: Some(30),
        ..Options::default()
    };
    let app = spawn_app_with(Backend::Sqlite, options).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let sender = tokio::spawn(async move {
        // Paced by the test on purpose: the behaviour under test is a slow client.
        for i in 0..8u8 {
            tx.send(Ok(vec![i; 4096])).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        }
    });
    let started = std::time::Instant::now();
    let response = app
        .http
        .post(app.url("/api/v1/images?hardware_id=slow&version=1"))
        .bearer_auth(&app.admin_token)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(tokio_stream_from(rx)))
        .send()
        .await
        .unwrap();
    sender.await.unwrap();
    let (status, image) = crate::helpers::decode(response).await;
    assert!(
        started.elapsed() > std::time::Duration::from_secs(2),
        "the upload outlived two request timeouts"
    );
    assert_eq!(status, 201, "{image}");
    assert_eq!(image["length"], 8 * 4096, "{image}");
    app.stop().await;
}

/// Item 7: a stalled upload ends with a 408 problem once no byte arrived for
/// `upload_idle_timeout_seconds`, and nothing of it stays on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408_after_the_idle_timeout_and_leaves_no_file() {
    let options = Options {
        request_timeout_seconds: Some(600),
        upload_idle_timeout_seconds: Some(1),
        ..Options::default()
    };
    let app = spawn_app_with(Backend::Sqlite, options).await.unwrap();
    let (tx, (status, problem)) = stalled_post(
        &app,
        "/api/v1/images?hardware_id=slow&version=1",
        "application/octet-stream",
        b"start",
    )
    .await;
    assert_eq!(status, 408, "{problem}");
    assert_eq!(problem["type"], "urn:ota:problem:upload-idle", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("upload_idle_timeout_seconds")),
        "the problem names the setting: {problem}"
    );
    drop(tx);
    assert_eq!(
        blob_files(&app),
        Vec::<String>::new(),
        "nothing stays on disk"
    );
    let (_, images) = app.get("/api/v1/images", &app.read_token).await;
    assert_eq!(
        images["items"],
        json!([]),
        "a stalled upload stores nothing"
    );
    app.stop().await;
}

/// Item 6: an empty upload is refused (422) and leaves no blob that `/v1/blobs` could
/// serve.
#[tokio::test]
async fn an_empty_upload_is_refused_and_leaves_no_blob() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/api/v1/images?hardware_id=hw&version=1"))
        .bearer_auth(&app.admin_token)
        .header("content-type", "application/octet-stream")
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    let (status, problem) = crate::helpers::decode(response).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        blob_files(&app),
        Vec::<String>::new(),
        "nothing stays on disk"
    );
    app.stop().await;
}

/// `/readyz` answers JSON (not problem+json) in both states: its body is a report.
async fn readyz(app: &TestApp) -> (u16, Value) {
    let response = app.http.get(app.url("/readyz")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn readyz_reports_a_broken_blob_store() {
    let app = spawn_app().await;
    let (status, body) = readyz(&app).await;
    assert_eq!((status, body["blob_store"].as_str()), (200, Some("ok")));
    // The blob directory replaced by a file: nothing can be stored or served.
    let blobs = app.dir.path().join("blobs").join("sha256");
    std::fs::remove_dir_all(&blobs).unwrap();
    std::fs::write(&blobs, b"not a directory").unwrap();
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "not ready without a blob store: {body}");
    assert_eq!(
        (
            body["status"].as_str(),
            body["blob_store"].as_str(),
            body["database"].as_str()
        ),
        (Some("not_ready"), Some("unavailable"), Some("ok")),
        "{body}"
    );
    std::fs::remove_file(&blobs).unwrap();
    std::fs::create_dir(&blobs).unwrap();
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "ready again once the store is back: {body}");
    app.stop().await;
}

pub(crate) fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn rate_limit_and_phases(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let keys: Vec<_> = (0..3).map(|_| device_key()).collect();
    for (i, key) in keys.iter().enumerate() {
        app.register_vehicle(&format!("veh-p{i}"), key, "hw-p", &[])
            .await;
    }
    // Phase 0 admits (practically) nobody and needs no soak. Its gate is never met
    // vacuously: however long it soaks, with nobody assigned it does not advance.
    let image = app.upload("hw-p", "5.0.0", b"p".repeat(64)).await;
    let (_, release) = app
        .post("/api/v1/releases", &app.admin_token, &json!({ "name": "rp", "version": "5.0.0", "security_version": 5, "images": [image["id"]] }))
        .await;
    let start = |body: Value| {
        let app = &app;
        async move {
            let (status, rollout) = app
                .post("/api/v1/rollouts", &app.rollout_token, &body)
                .await;
            assert_eq!(status, 201, "{rollout}");
            let id = rollout["id"].as_str().unwrap().to_owned();
            let (status, started) = app
                .post(
                    &format!("/api/v1/rollouts/{id}/start"),
                    &app.rollout_token,
                    &json!({}),
                )
                .await;
            assert_eq!(status, 200, "{started}");
            id
        }
    };
    let empty = start(json!({ "name": "rp-empty", "release_id": release["id"],
        "phases": [{ "name": "tiny", "percent": 0.001 }, { "name": "all", "percent": 100 }],
        "abort_criteria": { "min_number_of_executed_things": 1 } }))
    .await;
    let a_day_later = ota_server::engine::wall_clock_ms() + 86_400_000;
    app.state.engine.tick(a_day_later).await.unwrap();
    let (_, r) = app
        .get(&format!("/api/v1/rollouts/{empty}"), &app.read_token)
        .await;
    assert_eq!(
        r["current_phase"], 0,
        "an empty phase never passes its gate: {r}"
    );
    // An operator may open the next phase anyway (audited with their name), but not
    // past the last one.
    let advance = format!("/api/v1/rollouts/{empty}/advance");
    let (status, r) = app.post(&advance, &app.read_token, &json!({})).await;
    assert_eq!(status, 403, "{r}");
    let (status, r) = app.post(&advance, &app.rollout_token, &json!({})).await;
    assert_eq!((status, r["current_phase"].clone()), (200, json!(1)), "{r}");
    let (status, r) = app.post(&advance, &app.rollout_token, &json!({})).await;
    assert_eq!(status, 409, "the last phase cannot advance: {r}");
    let (_, r) = app
        .post(
            &format!("/api/v1/rollouts/{empty}/complete"),
            &app.rollout_token,
            &json!({}),
        )
        .await;
    assert_eq!(r["state"], "completed", "{r}");
    let (status, r) = app.post(&advance, &app.rollout_token, &json!({})).await;
    assert_eq!(status, 409, "a completed rollout cannot advance: {r}");
    // The rate limit of 1 per minute lets exactly one of the three vehicles start.
    let id = start(json!({ "name": "rp", "release_id": release["id"],
        "phases": [{ "name": "all", "percent": 100 }],
        "rate_limit": { "maximum_per_minute": 1 } }))
    .await;
    let _ = &id;
    let mut assigned = 0;
    for (i, key) in keys.iter().enumerate() {
        let vid = format!("veh-p{i}");
        let directive = app
            .state
            .engine
            .handle_checkin(
                &vid,
                &signed_checkin(key, &checkin(&vid, None, 0)),
                ota_server::engine::wall_clock_ms(),
            )
            .await
            .unwrap();
        let metadata: DirectorMetadata =
            parse_document(&Envelope::parse(&directive).unwrap().payload).unwrap();
        assigned += metadata.assignments.len();
    }
    assert_eq!(
        assigned, 1,
        "maximum_per_minute = 1 admits one vehicle per minute"
    );
    let (_, audit) = app.get("/api/v1/audit?limit=50", &app.admin_token).await;
    let advances: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "rollout.phase_advance")
        .collect();
    assert_eq!(advances.len(), 1, "only the operator's advance: {audit}");
    assert_ne!(advances[0]["actor"], "system", "{audit}");
    app.stop().await;
}
both_backends!(
    empty_phases_hold_and_rate_limit_holds,
    rate_limit_and_phases
);

/// An exponential rate starts at its base and multiplies by its factor with every
/// `increase_after_succeeded` committed vehicles (AWS IoT Jobs' `exponentialRate`).
async fn exponential_rate(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let keys: Vec<_> = (0..3).map(|_| device_key()).collect();
    for (i, key) in keys.iter().enumerate() {
        app.register_vehicle(&format!("veh-x{i}"), key, "hw-x", &[])
            .await;
    }
    let (old, new) = (b"o".repeat(64), b"x".repeat(64));
    let image = app.upload("hw-x", "6.0.0", new.clone()).await;
    let (_, release) = app
        .post("/api/v1/releases", &app.admin_token, &json!({ "name": "rx", "version": "6.0.0", "security_version": 6, "images": [image["id"]] }))
        .await;
    let (status, rollout) = app
        .post("/api/v1/rollouts", &app.rollout_token, &json!({ "name": "rx", "release_id": release["id"],
            "phases": [{ "name": "all", "percent": 100 }],
            "rate_limit": { "maximum_per_minute": 100, "exponential": {
                "base_rate_per_minute": 1, "increment_factor": 2, "increase_after_succeeded": 1 } } }))
        .await;
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_str().unwrap();
    let (status, _) = app
        .post(
            &format!("/api/v1/rollouts/{id}/start"),
            &app.rollout_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    // Each check-in a little over the snapshot's lifetime after the last (all within
    // the rate's minute), so it sees the counts the previous one left.
    let mut now = ota_server::engine::wall_clock_ms();
    let mut assigned = |i: usize, installed: &[u8], version: &str| {
        now += ota_server::engine::assign::SNAPSHOT_MS + 100;
        let vid = format!("veh-x{i}");
        let bytes = signed_checkin(&keys[i], &checkin(&vid, Some((version, installed)), 0));
        let engine = app.state.engine.clone();
        async move {
            let directive = engine.handle_checkin(&vid, &bytes, now).await.unwrap();
            let metadata: DirectorMetadata =
                parse_document(&Envelope::parse(&directive).unwrap().payload).unwrap();
            metadata.assignments.len()
        }
    };
    let steps: [(usize, &[u8], &str, usize, &str); 5] = [
        (0, &old, "1.0.0", 1, "the base rate admits one"),
        (1, &old, "1.0.0", 0, "no success yet: one per minute"),
        (0, &new, "6.0.0", 0, "veh-x0 commits the image"),
        (
            1,
            &old,
            "1.0.0",
            1,
            "one success doubles the rate: a second vehicle starts in the same minute",
        ),
        (2, &old, "1.0.0", 0, "two per minute, two started"),
    ];
    for (vehicle, installed, version, expected, why) in steps {
        assert_eq!(
            assigned(vehicle, installed, version).await,
            expected,
            "{why}"
        );
    }
    app.stop().await;
}
both_backends!(
    exponential_rate_grows_by_its_factor_with_each_success,
    exponential_rate
);

/// A batch of check-ins (`Engine::handle_checkins`, as the gateway hands them over) is
/// answered as the same check-ins one at a time: each rejection its own, a vehicle's
/// second check-in after its first (the same deployment, a newer director version), the
/// rate limit counted across the batch, a replay refused.
async fn checkin_batch(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let keys: Vec<_> = (0..4).map(|_| device_key()).collect();
    for (i, key) in keys.iter().enumerate() {
        app.register_vehicle(&format!("veh-b{i}"), key, "hw-b", &[])
            .await;
    }
    let image = app.upload("hw-b", "7.0.0", b"b".repeat(64)).await;
    let (_, release) = app
        .post("/api/v1/releases", &app.admin_token, &json!({ "name": "rb", "version": "7.0.0", "security_version": 7, "images": [image["id"]] }))
        .await;
    let (status, rollout) = app
        .post(
            "/api/v1/rollouts",
            &app.rollout_token,
            &json!({ "name": "rb", "release_id": release["id"],
            "phases": [{ "name": "all", "percent": 100 }],
            "rate_limit": { "maximum_per_minute": 2 } }),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    app.act(rollout["id"].as_str().unwrap(), &["start"]).await;
    let signed = |i: usize| signed_checkin(&keys[i], &checkin(&format!("veh-b{i}"), None, 0));
    let first_of_b1 = signed(1);
    let forged = signed_checkin(&device_key(), &checkin("veh-b3", None, 0));
    let batch: Vec<(&str, Vec<u8>)> = vec![
        ("veh-b0", signed(0)),
        ("veh-b9", signed(0)),
        ("veh-b1", first_of_b1.clone()),
        ("veh-b0", signed(0)),
        ("veh-b1", first_of_b1),
        ("veh-b2", signed(2)),
        ("veh-b3", forged),
        (
            "veh-nobody",
            signed_checkin(&device_key(), &checkin("veh-nobody", None, 0)),
        ),
    ];
    let messages: Vec<(&str, &[u8])> = batch.iter().map(|(v, b)| (*v, &b[..])).collect();
    let answers = app
        .state
        .engine
        .handle_checkins(&messages, ota_server::engine::wall_clock_ms())
        .await;
    let labels: Vec<&str> = answers
        .iter()
        .map(|a| a.as_ref().err().map_or("answered", |r| r.label()))
        .collect();
    assert_eq!(
        labels,
        [
            "answered",
            "topic_mismatch",
            "answered",
            "answered",
            "replayed",
            "answered",
            "bad_signature",
            "unknown_vehicle"
        ]
    );
    let metadata = |i: usize| -> DirectorMetadata {
        let bytes = answers[i].as_ref().unwrap();
        parse_document(&Envelope::parse(bytes).unwrap().payload).unwrap()
    };
    let deployments = |m: &DirectorMetadata| -> Vec<String> {
        m.assignments
            .iter()
            .map(|a| a.deployment_id.clone())
            .collect()
    };
    let (b0, b0_again, b1, b2) = (metadata(0), metadata(3), metadata(2), metadata(5));
    assert_eq!(deployments(&b0).len(), 1, "veh-b0 is assigned");
    assert_eq!(
        deployments(&b0_again),
        deployments(&b0),
        "its second check-in is sent the same deployment again"
    );
    assert!(
        b0_again.version > b0.version,
        "and a newer director version"
    );
    assert_eq!(
        deployments(&b1).len(),
        1,
        "veh-b1 is the second of two per minute"
    );
    assert!(
        deployments(&b2).is_empty(),
        "the rate limit holds across the batch"
    );
    let (_, listed) = app
        .get(
            &format!(
                "/api/v1/rollouts/{}/deployments",
                rollout["id"].as_str().unwrap()
            ),
            &app.read_token,
        )
        .await;
    let of_b0 = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["vehicle_id"] == "veh-b0")
        .count();
    assert_eq!(of_b0, 1, "one deployment for veh-b0, not two: {listed}");
    app.stop().await;
}
both_backends!(
    a_batch_of_check_ins_is_answered_as_one_at_a_time,
    checkin_batch
);

/// Director metadata from a check-in, parsed.
async fn directive_for(
    app: &TestApp,
    key: &ota_core::key::SigningKey,
    vid: &str,
    installed: &[u8],
    version: &str,
) -> (Vec<u8>, DirectorMetadata) {
    let bytes = signed_checkin(key, &checkin(vid, Some((version, installed)), 0));
    let directive = app
        .state
        .engine
        .handle_checkin(vid, &bytes, ota_server::engine::wall_clock_ms())
        .await
        .expect("a registered vehicle's check-in is accepted");
    let envelope = Envelope::parse(&directive).unwrap();
    let metadata = parse_document(&envelope.payload).unwrap();
    (directive, metadata)
}

async fn rollback_to_previous_images(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let key = device_key();
    let vid = unique("veh-rb-");
    app.register_vehicle(&vid, &key, "hw-rb", &[]).await;
    let (old_bytes, new_bytes) = (b"old firmware".repeat(50), b"new firmware".repeat(50));
    let old = app.upload("hw-rb", "1.0.0", old_bytes.clone()).await;
    let new = app.upload("hw-rb", "2.0.0", new_bytes.clone()).await;
    let release = |name: &str, image: &Value, security_version: u64| json!({ "name": name, "version": name, "security_version": security_version, "images": [image["id"]] });
    let (status, _) = app
        .post(
            "/api/v1/releases",
            &app.admin_token,
            &release("rb-1", &old, 3),
        )
        .await;
    assert_eq!(status, 201);
    let (status, new_release) = app
        .post(
            "/api/v1/releases",
            &app.admin_token,
            &release("rb-2", &new, 3),
        )
        .await;
    assert_eq!(status, 201, "{new_release}");
    let (status, rollout) = app
        .post("/api/v1/rollouts", &app.admin_token, &json!({ "name": "rb", "release_id": new_release["id"], "phases": [{ "name": "all", "percent": 100 }] }))
        .await;
    assert_eq!(status, 201, "{rollout}");
    let rid = rollout["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .post(
            &format!("/api/v1/rollouts/{rid}/start"),
            &app.rollout_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);

    // Updated: assigned the new image, then reports running it (committed).
    let (_, assigned) = directive_for(&app, &key, &vid, &old_bytes, "1.0.0").await;
    assert_eq!(
        assigned.assignments[0].image.sha256,
        Sha256Digest::of(&new_bytes)
    );
    let (_, settled) = directive_for(&app, &key, &vid, &new_bytes, "2.0.0").await;
    assert!(
        settled.assignments.is_empty(),
        "an updated vehicle has nothing to do"
    );

    let (status, rolled) = app
        .post(
            &format!("/api/v1/rollouts/{rid}/rollback"),
            &app.rollout_token,
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, &rolled["state"]),
        (200, &json!("rolled_back")),
        "{rolled}"
    );

    // The vehicle is sent back to the image it ran before, in director metadata that
    // the agent's verifier accepts against the newest targets (which still list it).
    let (director, back) = directive_for(&app, &key, &vid, &new_bytes, "2.0.0").await;
    assert_eq!(
        back.assignments.len(),
        1,
        "the vehicle must be sent back: {back:?}"
    );
    assert_eq!(
        back.assignments[0].image.sha256,
        Sha256Digest::of(&old_bytes)
    );
    assert_eq!(
        back.assignments[0].deployment_id,
        assigned.assignments[0].deployment_id
    );
    let fetch = |path: &'static str| app.vehicle_get(&vid, &key, path);
    let targets = fetch("/v1/metadata/targets.json")
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let root = fetch("/v1/metadata/root/1.json")
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let vehicle = ota_core::trust::VehicleIdentity {
        vehicle_id: vid.clone(),
        ecus: [("main".to_owned(), "hw-rb".to_owned())].into(),
    };
    let verified = ota_core::trust::TrustedState::from_anchor(&root)
        .unwrap()
        .with_installed("hw-rb", 3)
        .verify_update(
            &ota_core::trust::MetadataUpdate {
                roots: vec![],
                targets,
                director,
            },
            Some(&vehicle),
            Timestamp::from_datetime(chrono::Utc::now()),
        )
        .expect("the rollback assignment must verify exactly as the agent verifies it");
    assert_eq!(verified.assignments[0].security_version, 3);
    // The image it is sent back to is named by its directive: it may download it.
    let previous = format!("/v1/blobs/{}", Sha256Digest::of(&old_bytes));
    assert_eq!(app.vehicle_get(&vid, &key, &previous).await.status(), 200);

    // Back on the old image: the deployment is rolled back, nothing more to do.
    let (_, done) = directive_for(&app, &key, &vid, &old_bytes, "1.0.0").await;
    assert!(done.assignments.is_empty(), "{done:?}");
    let (_, status_body) = app
        .get(&format!("/api/v1/rollouts/{rid}/status"), &app.read_token)
        .await;
    assert_eq!(status_body["phases"][0]["rolled_back"], 1, "{status_body}");

    // A release that raised security_version cannot be rolled back: vehicles must refuse
    // the old image, so the server refuses to send it.
    let newer = app
        .upload("hw-rb", "3.0.0", b"newer firmware".repeat(50))
        .await;
    let (_, secure) = app
        .post(
            "/api/v1/releases",
            &app.admin_token,
            &release("rb-3", &newer, 4),
        )
        .await;
    let (_, rollout) = app
        .post("/api/v1/rollouts", &app.admin_token, &json!({ "name": "rb3", "release_id": secure["id"], "phases": [{ "name": "all", "percent": 100 }] }))
        .await;
    let rid = rollout["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/api/v1/rollouts/{rid}/start"),
        &app.rollout_token,
        &json!({}),
    )
    .await;
    let (_, assigned) = directive_for(&app, &key, &vid, &old_bytes, "1.0.0").await;
    assert_eq!(assigned.assignments.len(), 1);
    let (status, problem) = app
        .post(
            &format!("/api/v1/rollouts/{rid}/rollback"),
            &app.rollout_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("security_version"),
        "{problem}"
    );
    app.stop().await;
}
both_backends!(
    rollback_sends_vehicles_back_when_security_version_permits,
    rollback_to_previous_images
);

#[tokio::test]
async fn an_image_name_vehicles_would_refuse_is_refused_at_upload() {
    // `..`, `.hidden` or `-rf` pass the generic name check but not PROTOCOL.md §4.2;
    // a release listing one would make every vehicle refuse the targets document.
    let app = spawn_app().await;
    for name in ["..", ".hidden", "-rf"] {
        let (status, body) = app
            .post_raw(
                &format!("/api/v1/images?hardware_id=hw-a&version=1.0&name={name}"),
                &app.admin_token,
                "application/octet-stream",
                b"image bytes".to_vec(),
            )
            .await;
        assert_eq!(status, 422, "{name}: {body}");
        assert_eq!(body["errors"][0]["field"], "name", "{name}");
    }
    app.upload("hw-a", "1.0", b"image bytes".to_vec()).await;
}

/// Checks `body` against the schema the document gives `status` of `method path`.
fn assert_matches_document(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let response = &doc["paths"][path][method]["responses"][status.to_string()];
    let content = &response["content"];
    let schema = content["application/json"]["schema"]
        .as_object()
        .or_else(|| content["application/problem+json"]["schema"].as_object())
        .unwrap_or_else(|| panic!("{method} {path} documents no JSON {status}"));
    let mut root = Value::Object(schema.clone());
    root["components"] = doc["components"].clone();
    let validator = jsonschema::validator_for(&root).expect("a valid JSON Schema");
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match the document: {errors:?}\n{body}"
    );
}

/// What the server sends matches the document it serves, nulls included: a vehicle that
/// never checked in (no last_seen_at, agent_state, installed_*), a draft rollout (no
/// breaker_reason), audit entries of server-made changes (no request_id), problems.
#[tokio::test]
async fn served_records_match_their_documented_schemas() {
    let app = spawn_app().await;
    let (_, doc) = app.get("/api/v1/openapi.json", "").await;
    app.register_vehicle("never-seen", &device_key(), "hw-doc", &["eu"])
        .await;
    let (_, release, rollout) = app
        .release_and_rollout("hw-doc", json!([{ "name": "all", "percent": 100 }]))
        .await;
    let rollout_id = rollout["id"].as_str().unwrap();
    let release_id = release["id"].as_str().unwrap();
    let token = &app.admin_token;
    for (template, concrete) in [
        (
            "/api/v1/vehicles/{id}",
            "/api/v1/vehicles/never-seen".to_owned(),
        ),
        ("/api/v1/vehicles", "/api/v1/vehicles".to_owned()),
        (
            "/api/v1/rollouts/{id}",
            format!("/api/v1/rollouts/{rollout_id}"),
        ),
        (
            "/api/v1/rollouts/{id}/status",
            format!("/api/v1/rollouts/{rollout_id}/status"),
        ),
        ("/api/v1/rollouts", "/api/v1/rollouts".to_owned()),
        (
            "/api/v1/releases/{id}",
            format!("/api/v1/releases/{release_id}"),
        ),
        ("/api/v1/releases", "/api/v1/releases".to_owned()),
        ("/api/v1/images", "/api/v1/images".to_owned()),
        ("/api/v1/delta-jobs", "/api/v1/delta-jobs".to_owned()),
        ("/api/v1/audit", "/api/v1/audit".to_owned()),
        ("/api/v1/tokens", "/api/v1/tokens".to_owned()),
        ("/api/v1/targets", "/api/v1/targets".to_owned()),
        ("/healthz", "/healthz".to_owned()),
        ("/readyz", "/readyz".to_owned()),
    ] {
        let (status, body) = app.get(&concrete, token).await;
        assert_eq!(status, 200, "{concrete}: {body}");
        assert_matches_document(&doc, "get", template, status, &body);
    }
    let vehicle = app.get("/api/v1/vehicles/never-seen", token).await.1;
    assert!(vehicle["last_seen_at"].is_null() && vehicle["ecus"][0]["installed_version"].is_null());

    // A page with a next cursor, and the page after it (the last: a null cursor).
    let key = device_key();
    app.register_vehicle("checked-in", &key, "hw-doc", &["eu"])
        .await;
    let (status, first) = app.get("/api/v1/vehicles?limit=1", token).await;
    assert!(first["next_cursor"].is_string(), "{first}");
    assert_matches_document(&doc, "get", "/api/v1/vehicles", status, &first);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (status, last) = app
        .get(&format!("/api/v1/vehicles?limit=1&cursor={cursor}"), token)
        .await;
    assert!(last["next_cursor"].is_null(), "{last}");
    assert_matches_document(&doc, "get", "/api/v1/vehicles", status, &last);

    // A running rollout's deployments: the list, one vehicle's with its history, a
    // cancel; the dry run.
    app.post(
        &format!("/api/v1/rollouts/{rollout_id}/start"),
        token,
        &json!({}),
    )
    .await;
    let (_, directive) = directive_for(&app, &key, "checked-in", b"old", "1.0.0").await;
    assert_eq!(directive.assignments.len(), 1);
    for (template, concrete) in [
        (
            "/api/v1/rollouts/{id}/deployments",
            format!("/api/v1/rollouts/{rollout_id}/deployments?limit=1"),
        ),
        (
            "/api/v1/rollouts/{id}/deployments/{vehicle}",
            format!("/api/v1/rollouts/{rollout_id}/deployments/checked-in"),
        ),
        (
            "/api/v1/vehicles/{id}",
            "/api/v1/vehicles/checked-in".to_owned(),
        ),
    ] {
        let (status, body) = app.get(&concrete, token).await;
        assert_eq!(status, 200, "{concrete}: {body}");
        assert_matches_document(&doc, "get", template, status, &body);
    }
    let deployments = app
        .get(&format!("/api/v1/rollouts/{rollout_id}/deployments"), token)
        .await
        .1;
    assert!(
        deployments["items"][0]["from_sha256"].is_string() && deployments["next_cursor"].is_null(),
        "{deployments}"
    );
    let cancel = "/api/v1/rollouts/{id}/deployments/{vehicle}/cancel";
    let (status, body) = app
        .post(
            &format!("/api/v1/rollouts/{rollout_id}/deployments/checked-in/cancel"),
            token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_matches_document(&doc, "post", cancel, status, &body);
    let (status, body) = app
        .post(
            "/api/v1/rollouts:dry-run",
            token,
            &json!({ "name": "dry", "release_id": release_id, "phases": [{ "name": "all", "percent": 100 }] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_matches_document(&doc, "post", "/api/v1/rollouts:dry-run", status, &body);
    // Problems too.
    let (status, body) = app.get("/api/v1/images?limit=0", token).await;
    assert_matches_document(&doc, "get", "/api/v1/images", status, &body);
    let (status, body) = app.get("/api/v1/rollouts/ro_0000000000000000", token).await;
    assert_eq!(status, 404);
    assert_matches_document(&doc, "get", "/api/v1/rollouts/{id}", status, &body);
    app.stop().await;
}

/// The audit filters' length is stated in characters (JSON Schema `maxLength`), so a
/// filter of 256 non-ASCII characters is a valid one (it was counted in bytes and
/// refused); 257 characters, or a control character, are not.
#[tokio::test]
async fn audit_filters_are_limited_as_documented() {
    let app = spawn_app().await;
    let (_, doc) = app.get("/api/v1/openapi.json", "").await;
    let max = doc["components"]["schemas"]["AuditFilterText"]["maxLength"]
        .as_u64()
        .unwrap() as usize;
    let (status, body) = app
        .get(
            &format!("/api/v1/audit?actor={}", "%C3%A9".repeat(max)),
            &app.admin_token,
        )
        .await;
    assert_eq!(status, 200, "{max} characters: {body}");
    for bad in ["%C3%A9".repeat(max + 1), "a%01b".to_owned()] {
        let (status, body) = app
            .get(&format!("/api/v1/audit?actor={bad}"), &app.admin_token)
            .await;
        assert_eq!(status, 422, "actor={bad}: {body}");
        assert_eq!(body["errors"][0]["field"], "actor", "{body}");
    }
    app.stop().await;
}

async fn deployments_of_a_rollout(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let keys: Vec<_> = (0..3).map(|_| device_key()).collect();
    let vids: Vec<String> = (0..3).map(|i| format!("veh-d{i}")).collect();
    for (vid, key) in vids.iter().zip(&keys) {
        app.register_vehicle(vid, key, "hw-d", &[]).await;
    }
    let (image, _, rollout) = app
        .release_and_rollout("hw-d", json!([{ "name": "all", "percent": 100 }]))
        .await;
    let id = rollout["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .post(
            &format!("/api/v1/rollouts/{id}/start"),
            &app.rollout_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let mut deployment_ids = Vec::new();
    for (vid, key) in vids.iter().zip(&keys) {
        let (_, d) = directive_for(&app, key, vid, b"old", "1.0.0").await;
        assert_eq!(d.assignments.len(), 1, "{vid} is assigned");
        deployment_ids.push(d.assignments[0].deployment_id.clone());
    }
    // Pages of two, following the cursor, give every deployment once, in vehicle order.
    let (all, pages) = follow_pages(
        &app,
        &format!("/api/v1/rollouts/{id}/deployments?phase=0"),
        2,
    )
    .await;
    assert_eq!((field(&all, "vehicle_id"), pages), (vids.clone(), 2));
    let list = |query: &str| {
        let app = &app;
        let path = format!("/api/v1/rollouts/{id}/deployments?{query}");
        async move { app.get(&path, &app.read_token).await }
    };
    let (_, page) = list("state=assigned").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3, "{page}");
    assert_eq!(page["items"][0]["phase"], 0, "{page}");
    let (_, page) = list("phase=1").await;
    assert_eq!(page["items"], json!([]), "{page}");
    let (status, problem) = list("state=sideways").await;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (422, Some("state"))
    );
    for bad in [
        "garbage",
        "eyJ4Ijp9",
        "WyJyb2xsb3V0cyIsInZlaC1kMCIsIm1haW4iXQ",
    ] {
        let (status, problem) = list(&format!("cursor={bad}")).await;
        assert_eq!(status, 400, "{bad}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().starts_with("cursor: "),
            "the problem names the cursor: {problem}"
        );
    }

    // Committed by the vehicle's own check-in: recorded as its event.
    let version = image["version"].as_str().unwrap();
    let firmware = b"new firmware image bytes".repeat(100);
    directive_for(&app, &keys[1], &vids[1], &firmware, version).await;

    let deployment = |vid: &str| {
        let app = &app;
        let path = format!("/api/v1/rollouts/{id}/deployments/{vid}");
        async move { app.get(&path, &app.read_token).await }
    };
    let act = |vid: &str, action: &str, token: &str| {
        let app = &app;
        let path = format!("/api/v1/rollouts/{id}/deployments/{vid}/{action}");
        let token = token.to_owned();
        async move { app.post(&path, &token, &json!({})).await }
    };
    let (status, _) = act(&vids[0], "cancel", &app.read_token).await;
    assert_eq!(status, 403, "cancelling needs rollout:write");
    let (status, cancelled) = act(&vids[0], "cancel", &app.rollout_token).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled[0]["status"], "cancelled", "{cancelled}");
    // The director hands a cancelled deployment out no more.
    let (_, d) = directive_for(&app, &keys[0], &vids[0], b"old", "1.0.0").await;
    assert!(d.assignments.is_empty(), "cancelled: {:?}", d.assignments);
    let (status, problem) = act(&vids[0], "cancel", &app.rollout_token).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .ends_with("allowed actions: retry"),
        "{problem}"
    );
    let (status, one) = deployment(&vids[0]).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["allowed_actions"], json!(["retry"]), "{one}");
    let events = &one["deployments"][0]["events"];
    assert_eq!(events[0]["status"], "assigned", "{one}");
    assert_eq!(events[0]["source"], "director", "{one}");
    assert_eq!(events[1]["status"], "cancelled", "{one}");
    assert_eq!(events[1]["source"], "test-rollouts", "{one}");

    // Retry: assigned again, one more attempt, and the next check-in carries it.
    let (status, retried) = act(&vids[0], "retry", &app.rollout_token).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(
        (
            retried[0]["status"].as_str(),
            retried[0]["attempts"].as_u64()
        ),
        (Some("assigned"), Some(2))
    );
    let (_, d) = directive_for(&app, &keys[0], &vids[0], b"old", "1.0.0").await;
    assert_eq!(d.assignments.len(), 1, "the retry is handed out");
    assert_eq!(d.assignments[0].deployment_id, deployment_ids[0]);
    let (status, problem) = act(&vids[0], "retry", &app.rollout_token).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .ends_with("allowed actions: cancel"),
        "{problem}"
    );

    // A committed deployment can be neither cancelled nor retried.
    let (_, one) = deployment(&vids[1]).await;
    let events: Vec<(&str, &str)> = one["deployments"][0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["status"].as_str().unwrap(), e["source"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        vec![("assigned", "director"), ("committed", "vehicle")],
        "{one}"
    );
    assert_eq!(one["allowed_actions"], json!([]), "{one}");
    let (status, problem) = act(&vids[1], "retry", &app.rollout_token).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .ends_with("allowed actions: none"),
        "{problem}"
    );
    let (status, _) = act("veh-not-in-it", "cancel", &app.rollout_token).await;
    assert_eq!(status, 404);
    let (status, _) = deployment("veh-not-in-it").await;
    assert_eq!(status, 404);

    let (_, audit) = app.get("/api/v1/audit?limit=50", &app.admin_token).await;
    let actions: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"].as_str().unwrap().starts_with("deployment."))
        .map(|a| (a["action"].as_str().unwrap(), a["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("deployment.retry", "test-rollouts"),
            ("deployment.cancel", "test-rollouts")
        ],
        "only the changes that happened are audited, newest first"
    );
    app.stop().await;
}
both_backends!(
    rollout_deployments_list_cancel_retry,
    deployments_of_a_rollout
);

async fn dry_run_matches_the_director(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let mut keys = Vec::new();
    for i in 0..40 {
        let key = device_key();
        let tags: &[&str] = if i % 2 == 0 { &["eu"] } else { &["us"] };
        app.register_vehicle(&format!("veh-y{i:02}"), &key, "hw-y", tags)
            .await;
        keys.push(key);
    }
    // Selected by tag, but hardware the release does not target: never counted.
    app.register_vehicle("veh-z", &device_key(), "hw-z", &["eu"])
        .await;
    let image = app.upload("hw-y", "3.0.0", b"y".repeat(64)).await;
    let (_, release) = app
        .post("/api/v1/releases", &app.admin_token, &json!({ "name": "ry", "version": "3.0.0", "security_version": 1, "images": [image["id"]] }))
        .await;
    let salt = "00112233445566778899aabbccddeeff";
    let spec = json!({ "name": "ry", "release_id": release["id"], "salt": salt,
        "selector": { "tags": ["eu"] },
        "phases": [{ "name": "canary", "percent": 30 }, { "name": "all", "percent": 100 }] });
    let (_, audit_before) = app.get("/api/v1/audit?limit=1000", &app.admin_token).await;
    let (status, _) = app
        .post("/api/v1/rollouts:dry-run", &app.read_token, &spec)
        .await;
    assert_eq!(status, 403, "a dry run needs rollout:write");
    let (status, dry) = app
        .post("/api/v1/rollouts:dry-run", &app.rollout_token, &spec)
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["salt"], salt);
    assert_eq!(dry["vehicles"], 20, "the 20 eu vehicles of hw-y: {dry}");
    let canary: Vec<String> = dry["phases"][0]["sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let canary_count = dry["phases"][0]["vehicles"].as_u64().unwrap() as usize;
    assert_eq!(
        canary.len(),
        canary_count,
        "the whole canary fits the sample: {dry}"
    );
    assert!((1..20).contains(&canary_count), "{dry}");
    assert_eq!(
        dry["phases"][1]["vehicles"].as_u64().unwrap() as usize,
        20 - canary_count
    );
    assert!(canary.iter().all(|v| v.starts_with("veh-y")), "{dry}");
    // Nothing was created or audited.
    let (_, rollouts) = app.get("/api/v1/rollouts", &app.read_token).await;
    assert_eq!(rollouts["items"], json!([]));
    let (_, audit_after) = app.get("/api/v1/audit?limit=1000", &app.admin_token).await;
    assert_eq!(audit_before, audit_after);
    // The same rules as create.
    let mut bad = spec.clone();
    bad["salt"] = json!("XYZ");
    let (status, problem) = app
        .post("/api/v1/rollouts:dry-run", &app.rollout_token, &bad)
        .await;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (422, Some("salt")),
        "{problem}"
    );

    // The real rollout with that salt assigns exactly the canary.
    let (status, rollout) = app
        .post("/api/v1/rollouts", &app.rollout_token, &spec)
        .await;
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/rollouts/{id}/start"),
        &app.rollout_token,
        &json!({}),
    )
    .await;
    let mut assigned = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let vid = format!("veh-y{i:02}");
        let (_, d) = directive_for(&app, key, &vid, b"old", "1.0.0").await;
        if !d.assignments.is_empty() {
            assigned.push(vid);
        }
    }
    assert_eq!(
        assigned, canary,
        "the director assigns exactly the dry run's canary"
    );
    app.stop().await;
}
both_backends!(
    rollout_dry_run_matches_what_the_director_assigns,
    dry_run_matches_the_director
);

async fn token_expiry(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let store = &app.state.store;
    let actor = ota_server::store::Actor::system();
    let now = ota_server::engine::wall_clock_ms();
    let scopes = [ota_server::tokens::Scope::Read];
    let (expired, expired_token) =
        ota_server::tokens::create_expiring_token(store, &actor, "old", &scopes, Some(now - 1000))
            .await
            .unwrap();
    let (_, live_token) = ota_server::tokens::create_expiring_token(
        store,
        &actor,
        "fresh",
        &scopes,
        Some(now + 3_600_000),
    )
    .await
    .unwrap();
    let (status, problem) = app.get("/api/v1/images", &expired_token).await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(
        problem["type"], "urn:ota:problem:token-expired",
        "{problem}"
    );
    let at = ota_server::store::ms_to_rfc3339(now - 1000);
    assert_eq!(
        problem["detail"],
        format!("the bearer token expired at {at}")
    );
    // Blob downloads take read tokens too, and refuse the expired one the same way.
    let blob = format!("/v1/blobs/{}", "0".repeat(64));
    let (status, problem) = app.get(&blob, &expired_token).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (401, Some("urn:ota:problem:token-expired"))
    );
    let (status, body) = app.get("/api/v1/images", &live_token).await;
    assert_eq!(status, 200, "a token before its expiry works: {body}");
    let (_, tokens) = app.get("/api/v1/tokens", &app.admin_token).await;
    let listed = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == expired.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(listed["expires_at"], at.as_str(), "{tokens}");
    let (_, audit) = app.get("/api/v1/audit?limit=50", &app.admin_token).await;
    let created = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "token.create" && a["subject"] == expired.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(created["detail"]["expires_at"], at.as_str(), "{created}");
    app.stop().await;
}
both_backends!(expired_tokens_are_refused_naming_the_expiry, token_expiry);

/// Every item of `path` (with a query string), following `next_cursor` pages of `limit`.
async fn follow_pages(app: &TestApp, path: &str, limit: u32) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{path}&limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = app.get(&url, &app.admin_token).await;
        assert_eq!(status, 200, "{url}: {page}");
        pages += 1;
        let got = page["items"].as_array().unwrap();
        assert!(got.len() <= limit as usize, "{page}");
        items.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (items, pages),
        }
    }
}

fn field(items: &[Value], name: &str) -> Vec<String> {
    items
        .iter()
        .map(|i| i[name].as_str().unwrap().to_owned())
        .collect()
}

async fn lists(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let mut images = Vec::new();
    for (hw, version) in [("hw-l", "1.0.0"), ("hw-l", "1.1.0"), ("hw-m", "1.0.0")] {
        images.push(
            app.upload(
                hw,
                version,
                format!("{hw}{version}").repeat(20).into_bytes(),
            )
            .await,
        );
    }
    let ids = |v: &[Value]| field(v, "id");
    // Oldest first by default, newest first with order=desc; pages of one follow the
    // cursor through all of them.
    let (all, pages) = follow_pages(&app, "/api/v1/images?order=asc", 1).await;
    assert_eq!((ids(&all), pages), (ids(&images), 3));
    let (all, _) = follow_pages(&app, "/api/v1/images?order=desc", 2).await;
    let mut newest_first = ids(&images);
    newest_first.reverse();
    assert_eq!(ids(&all), newest_first);
    let (all, _) = follow_pages(&app, "/api/v1/images?hardware_id=hw-l&version=1.1.0", 5).await;
    assert_eq!(ids(&all), vec![ids(&images)[1].clone()]);

    let mut releases = Vec::new();
    for (name, version) in [("l1", "1.0.0"), ("l2", "1.1.0"), ("l3", "1.1.0")] {
        let (status, r) = app
            .post("/api/v1/releases", &app.admin_token, &json!({ "name": name, "version": version, "security_version": 1, "images": [images[0]["id"]] }))
            .await;
        assert_eq!(status, 201, "{r}");
        releases.push(r);
    }
    let (all, pages) = follow_pages(&app, "/api/v1/releases?version=1.1.0", 1).await;
    assert_eq!((ids(&all), pages), (ids(&releases[1..]), 2));
    let mut rollouts = Vec::new();
    for release in &releases[..2] {
        let (status, r) = app
            .post("/api/v1/rollouts", &app.admin_token, &json!({ "name": "l", "release_id": release["id"], "phases": [{ "name": "all", "percent": 100 }] }))
            .await;
        assert_eq!(status, 201, "{r}");
        rollouts.push(r);
    }
    let (all, _) = follow_pages(
        &app,
        &format!(
            "/api/v1/rollouts?state=draft&release_id={}",
            releases[1]["id"].as_str().unwrap()
        ),
        1,
    )
    .await;
    assert_eq!(ids(&all), ids(&rollouts[1..]));
    let (all, _) = follow_pages(&app, "/api/v1/delta-jobs?status=queued", 1).await;
    assert!(all.is_empty());
    // Tokens (the test app's admin, read and rollout tokens), a page at a time.
    let (tokens, pages) = follow_pages(&app, "/api/v1/tokens?order=asc", 1).await;
    assert_eq!((tokens.len(), pages), (3, 3), "{tokens:?}");
    let (newest_first, _) = follow_pages(&app, "/api/v1/tokens?order=desc", 2).await;
    assert_eq!(field(&newest_first, "id"), {
        let mut ids = field(&tokens, "id");
        ids.reverse();
        ids
    });

    // Vehicles by id, past any one page, filtered by a tag set.
    for i in 0..5 {
        let tags: &[&str] = if i % 2 == 0 { &["eu", "beta"] } else { &["eu"] };
        app.register_vehicle(&format!("veh-l{i}"), &device_key(), "hw-l", tags)
            .await;
    }
    let (all, pages) = follow_pages(&app, "/api/v1/vehicles?tag=eu", 2).await;
    assert_eq!(pages, 3);
    assert_eq!(
        field(&all, "id"),
        (0..5).map(|i| format!("veh-l{i}")).collect::<Vec<_>>()
    );
    let (all, _) = follow_pages(&app, "/api/v1/vehicles?tags=eu,beta", 2).await;
    assert_eq!(field(&all, "id"), vec!["veh-l0", "veh-l2", "veh-l4"]);
    let (all, _) = follow_pages(&app, "/api/v1/vehicles?tag=eu&order=desc", 2).await;
    assert_eq!(
        field(&all, "id"),
        (0..5)
            .rev()
            .map(|i| format!("veh-l{i}"))
            .collect::<Vec<_>>()
    );
    // By last check-in: veh-l3 at t, veh-l1 and veh-l4 at t + 1 s (their order then by
    // id), the two never seen first as the oldest.
    let t = 1_900_000_000_000i64;
    for (id, at) in [("veh-l4", t + 1000), ("veh-l3", t), ("veh-l1", t + 1000)] {
        let known = app.state.store.get_vehicle(id).await.unwrap().ecus;
        app.state
            .store
            .record_checkin(&crate::helpers::checkin(id, None, 0), &known, at)
            .await
            .unwrap();
    }
    let by_seen = ["veh-l0", "veh-l2", "veh-l3", "veh-l1", "veh-l4"];
    let (all, pages) = follow_pages(&app, "/api/v1/vehicles?sort=last_seen_at", 1).await;
    assert_eq!(
        (field(&all, "id"), pages),
        (by_seen.map(String::from).to_vec(), 5)
    );
    let (all, _) = follow_pages(&app, "/api/v1/vehicles?sort=last_seen_at&order=desc", 2).await;
    assert_eq!(field(&all, "id"), {
        let mut ids = by_seen.map(String::from).to_vec();
        ids.reverse();
        ids
    });

    // The audit log, newest first, by actor, action, target and time.
    let (all, _) = follow_pages(&app, "/api/v1/audit?action=vehicle.register", 2).await;
    assert_eq!(all.len(), 5);
    assert_eq!(all[0]["subject"], "veh-l4", "newest first");
    let (all, _) = follow_pages(&app, "/api/v1/audit?target=veh-l1", 10).await;
    assert_eq!(field(&all, "action"), vec!["vehicle.register"]);
    let (all, _) = follow_pages(
        &app,
        "/api/v1/audit?actor=test-admin&action=release.create",
        10,
    )
    .await;
    assert_eq!(field(&all, "subject"), {
        let mut r = ids(&releases);
        r.reverse();
        r
    });
    let (all, _) = follow_pages(&app, "/api/v1/audit?actor=nobody", 10).await;
    assert!(all.is_empty());
    let (all, _) = follow_pages(
        &app,
        "/api/v1/audit?since=2000-01-01T00:00:00Z&until=2100-01-01T00:00:00Z",
        1000,
    )
    .await;
    assert!(all.len() >= 13, "{}", all.len());
    let (all, _) = follow_pages(&app, "/api/v1/audit?until=2000-01-01T00:00:00Z", 10).await;
    assert!(all.is_empty());

    // Cursors are opaque and belong to one list and one order.
    let (_, first) = app.get("/api/v1/images?limit=1", &app.read_token).await;
    let images_cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, first) = app.get("/api/v1/vehicles?limit=1", &app.read_token).await;
    let vehicles_cursor = first["next_cursor"].as_str().unwrap().to_owned();
    for path in [
        format!("/api/v1/releases?cursor={images_cursor}"),
        format!("/api/v1/images?order=desc&cursor={images_cursor}"),
        "/api/v1/rollouts?cursor=nope".to_owned(),
        "/api/v1/vehicles?cursor=WyJ2ZWhpY2xlcyJd".to_owned(),
        "/api/v1/audit?cursor=WyJhdWRpdCIsIngiXQ".to_owned(),
        "/api/v1/delta-jobs?cursor=%00".to_owned(),
        format!("/api/v1/vehicles?sort=last_seen_at&cursor={vehicles_cursor}"),
    ] {
        let (status, problem) = app.get(&path, &app.admin_token).await;
        assert_eq!(status, 400, "{path}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().starts_with("cursor: "),
            "{path}: {problem}"
        );
    }
    for (path, name) in [
        ("/api/v1/images?order=sideways", "order"),
        ("/api/v1/audit?since=yesterday", "since"),
        ("/api/v1/vehicles?tags=eu,eu", "tags[1]"),
        ("/api/v1/delta-jobs?status=lost", "status"),
        ("/api/v1/vehicles?sort=name", "sort"),
        ("/api/v1/vehicles?order=up", "order"),
    ] {
        let (status, problem) = app.get(path, &app.admin_token).await;
        assert_eq!(
            (status, problem["errors"][0]["field"].as_str()),
            (422, Some(name)),
            "{path}: {problem}"
        );
    }
    app.stop().await;
}
both_backends!(lists_page_by_cursor_sort_and_filter, lists);

async fn vehicle_changes(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let (k0, k1) = (device_key(), device_key());
    app.register_vehicle("veh-c0", &k0, "hw-c", &["eu"]).await;
    app.register_vehicle("veh-c1", &k1, "hw-c", &["eu"]).await;
    let put = |path: &str, token: &str, body: Value| {
        let app = &app;
        let (path, token) = (path.to_owned(), token.to_owned());
        async move {
            let response = app
                .http
                .put(app.url(&path))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            crate::helpers::decode(response).await
        }
    };
    let tags = "/api/v1/vehicles/veh-c0/tags";
    let (status, _) = put(tags, &app.read_token, json!({ "tags": ["us"] })).await;
    assert_eq!(status, 403);
    let (status, problem) = put(tags, &app.admin_token, json!({ "tags": ["us", "a b"] })).await;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (422, Some("tags[1]"))
    );
    let (status, vehicle) = put(tags, &app.admin_token, json!({ "tags": ["us", "beta"] })).await;
    assert_eq!(
        (status, vehicle["tags"].clone()),
        (200, json!(["us", "beta"])),
        "{vehicle}"
    );
    let (_, list) = app.get("/api/v1/vehicles?tag=eu", &app.read_token).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // A rotated key: the old key's signatures are refused, the new key's accepted.
    let k0_new = device_key();
    let rotate = "/api/v1/vehicles/veh-c0/rotate-key";
    let (status, problem) = app
        .post(rotate, &app.admin_token, &json!({ "public_key": "00" }))
        .await;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (422, Some("public_key"))
    );
    let (status, body) = app
        .post(
            rotate,
            &app.admin_token,
            &json!({ "public_key": k0_new.public_key().to_hex() }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app
        .post(
            rotate,
            &app.admin_token,
            &json!({ "public_key": k0_new.public_key().to_hex() }),
        )
        .await;
    assert_eq!(status, 409, "the same key again changes nothing");
    let now = ota_server::engine::wall_clock_ms;
    let engine = &app.state.engine;
    let old = engine
        .handle_checkin(
            "veh-c0",
            &signed_checkin(&k0, &checkin("veh-c0", None, 0)),
            now(),
        )
        .await
        .unwrap_err();
    assert_eq!(old.label(), "bad_signature", "{old}");
    engine
        .handle_checkin(
            "veh-c0",
            &signed_checkin(&k0_new, &checkin("veh-c0", None, 0)),
            now(),
        )
        .await
        .expect("the new key signs");

    // Decommissioned: deployments not yet installing cancelled, check-ins refused.
    let (_, _, rollout) = app
        .release_and_rollout("hw-c", json!([{ "name": "all", "percent": 100 }]))
        .await;
    let id = rollout["id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/rollouts/{id}/start"),
        &app.admin_token,
        &json!({}),
    )
    .await;
    let (_, d) = directive_for(&app, &k1, "veh-c1", b"old", "1.0.0").await;
    assert_eq!(d.assignments.len(), 1);
    let decommission = "/api/v1/vehicles/veh-c1/decommission";
    let (status, vehicle) = app.post(decommission, &app.admin_token, &json!({})).await;
    assert_eq!(status, 200, "{vehicle}");
    assert!(vehicle["decommissioned_at"].is_string(), "{vehicle}");
    let refused = engine
        .handle_checkin(
            "veh-c1",
            &signed_checkin(&k1, &checkin("veh-c1", None, 0)),
            now(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.label(), "decommissioned", "{refused}");
    let (_, one) = app
        .get(
            &format!("/api/v1/rollouts/{id}/deployments/veh-c1"),
            &app.read_token,
        )
        .await;
    assert_eq!(one["deployments"][0]["status"], "cancelled", "{one}");
    assert_eq!(
        one["deployments"][0]["reason_code"], "decommissioned",
        "{one}"
    );
    let (status, problem) = app.post(decommission, &app.admin_token, &json!({})).await;
    assert_eq!(status, 409, "{problem}");
    let (status, _) = put(
        "/api/v1/vehicles/veh-c1/tags",
        &app.admin_token,
        json!({ "tags": [] }),
    )
    .await;
    assert_eq!(status, 409, "a decommissioned vehicle does not change");
    let (_, status_view) = app
        .get(&format!("/api/v1/rollouts/{id}/status"), &app.read_token)
        .await;
    assert_eq!(
        status_view["phases"][0]["eligible"], 1,
        "only veh-c0 is in service: {status_view}"
    );

    let (_, audit) = app
        .get("/api/v1/audit?target=veh-c0", &app.admin_token)
        .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec!["vehicle.rotate_key", "vehicle.retag", "vehicle.register"]
    );
    let (_, audit) = app
        .get(
            "/api/v1/audit?target=veh-c1&action=vehicle.decommission",
            &app.admin_token,
        )
        .await;
    assert_eq!(audit["items"][0]["actor"], "test-admin", "{audit}");
    app.stop().await;
}
both_backends!(vehicles_retag_rotate_key_and_decommission, vehicle_changes);

async fn deletions(backend: Backend) {
    let Some(app) = app(backend, Options::default()).await else {
        return;
    };
    let upload = |hw: &'static str, version: &'static str, bytes: &'static [u8]| {
        let app = &app;
        async move { app.upload(hw, version, bytes.repeat(40)).await }
    };
    let x = upload("hw-g", "0.9.0", b"x").await;
    let a = upload("hw-g", "1.0.0", b"a").await;
    let b = upload("hw-g", "2.0.0", b"b").await;
    let c = upload("hw-g", "3.0.0", b"c").await;
    // The same bytes under another hardware id: one blob, two images.
    let c_twin = upload("hw-h", "3.0.0", b"c").await;
    let release = |name: &'static str, image: &Value| {
        let app = &app;
        let body = json!({ "name": name, "version": "1.0.0", "security_version": 1, "images": [image["id"]] });
        async move {
            let (status, r) = app.post("/api/v1/releases", &app.admin_token, &body).await;
            assert_eq!(status, 201, "{r}");
            r["id"].as_str().unwrap().to_owned()
        }
    };
    let r0 = release("g0", &x).await;
    let r1 = release("g1", &a).await;
    let r2 = release("g2", &b).await;
    let (_, rollout) = app
        .post("/api/v1/rollouts", &app.admin_token, &json!({ "name": "g", "release_id": r1, "phases": [{ "name": "all", "percent": 100 }] }))
        .await;
    let rollout = rollout["id"].as_str().unwrap().to_owned();
    let delete = |path: String, token: String| {
        let app = &app;
        async move {
            let response = app
                .http
                .delete(app.url(&path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            crate::helpers::decode(response).await
        }
    };
    let image_path = |image: &Value| format!("/api/v1/images/{}", image["id"].as_str().unwrap());
    let blob_file = |image: &Value| {
        app.dir
            .path()
            .join("blobs/sha256")
            .join(image["sha256"].as_str().unwrap())
    };
    let admin = app.admin_token.clone();

    let (status, _) = delete(image_path(&c), app.read_token.clone()).await;
    assert_eq!(status, 403, "deleting needs release:write");
    let (status, problem) = delete(image_path(&a), admin.clone()).await;
    assert_eq!(status, 409, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(&r1) && detail.contains(&rollout),
        "names the release and rollout: {detail}"
    );
    let (status, problem) = delete(format!("/api/v1/releases/{r1}"), admin.clone()).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains(&rollout),
        "{problem}"
    );
    let (status, problem) = delete(format!("/api/v1/releases/{r2}"), admin.clone()).await;
    assert_eq!(status, 409, "the newest targets stay: {problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("newest signed targets"),
        "{problem}"
    );

    // An unused image whose bytes another image shares: the blob stays.
    let (status, deleted) = delete(image_path(&c), admin.clone()).await;
    assert_eq!(
        (status, deleted["blobs_removed"].clone()),
        (200, json!([])),
        "{deleted}"
    );
    assert!(blob_file(&c).exists());
    let (status, _) = app.get(&image_path(&c), &app.read_token).await;
    assert_eq!(status, 404);
    // The last image with those bytes: the blob is removed and no longer served.
    let (status, deleted) = delete(image_path(&c_twin), admin.clone()).await;
    assert_eq!(
        (status, deleted["blobs_removed"].clone()),
        (200, json!([c["sha256"]])),
        "{deleted}"
    );
    assert!(!blob_file(&c).exists(), "garbage-collected");
    let (status, _) = app
        .get(
            &format!("/v1/blobs/{}", c["sha256"].as_str().unwrap()),
            &app.read_token,
        )
        .await;
    assert_eq!(status, 404);

    // A release no rollout uses, then its image.
    let (status, _) = delete(image_path(&x), admin.clone()).await;
    assert_eq!(status, 409, "r0 still lists it");
    let (status, deleted) = delete(format!("/api/v1/releases/{r0}"), admin.clone()).await;
    assert_eq!(status, 200, "{deleted}");
    let (status, _) = app
        .get(&format!("/api/v1/releases/{r0}"), &app.read_token)
        .await;
    assert_eq!(status, 404);
    let (status, deleted) = delete(image_path(&x), admin.clone()).await;
    assert_eq!(
        (status, deleted["blobs_removed"].clone()),
        (200, json!([x["sha256"]])),
        "{deleted}"
    );
    assert!(
        blob_file(&a).exists() && blob_file(&b).exists(),
        "used blobs stay"
    );

    let (_, audit) = app
        .get("/api/v1/audit?action=image.delete", &app.admin_token)
        .await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 3, "{audit}");
    let (_, audit) = app
        .get(
            &format!("/api/v1/audit?action=release.delete&target={r0}"),
            &app.admin_token,
        )
        .await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");
    app.stop().await;
}
both_backends!(
    unused_images_and_releases_are_deleted_and_blobs_collected,
    deletions
);
