//! The OpenAPI 3.1 document, served at `/api/v1/openapi.json`.
//!
//! Built by hand from one table of operations rather than derived: the table is short,
//! readable, and a test checks it against the routes the router actually mounts (see
//! `super::Routes`), so the document cannot drift from the server.

use super::{validate, AppState, Routes};
use axum::routing::get;
use axum::Json;
use serde_json::{json, Map, Value};

pub fn routes() -> Routes {
    Routes::default().add("get", "/api/v1/openapi.json", get(serve))
}

async fn serve(_: axum::extract::State<AppState>) -> Json<Value> {
    Json(document())
}

/// One documented operation.
#[derive(Debug)]
struct Op {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    /// Required scope; `None` = no bearer token (public or vehicle-authenticated).
    scope: Option<&'static str>,
    /// (content type, schema name)
    body: Option<(&'static str, &'static str)>,
    /// (status, schema name or "" for a non-JSON body)
    ok: (u16, &'static str),
    query: &'static [&'static str],
}

const OPS: &[Op] = &[
    Op { method: "get", path: "/healthz", id: "healthz", summary: "Liveness", scope: None, body: None, ok: (200, "Health"), query: &[] },
    Op { method: "get", path: "/readyz", id: "readyz", summary: "Readiness: database, blob store and broker reachability", scope: None, body: None, ok: (200, "Ready"), query: &[] },
    Op { method: "get", path: "/metrics", id: "metrics", summary: "Prometheus metrics (text exposition format)", scope: None, body: None, ok: (200, ""), query: &[] },
    Op { method: "get", path: "/api/v1/openapi.json", id: "openapi", summary: "This document", scope: None, body: None, ok: (200, "Object"), query: &[] },
    Op { method: "post", path: "/api/v1/images", id: "uploadImage", summary: "Stream a full image (application/octet-stream); hashed while streaming, size-limited", scope: Some("release:write"), body: Some(("application/octet-stream", "")), ok: (201, "Image"), query: &["hardware_id", "version", "name"] },
    Op { method: "get", path: "/api/v1/images", id: "listImages", summary: "List images", scope: Some("read"), body: None, ok: (200, "ImageList"), query: &["hardware_id", "version", "limit", "cursor", "order"] },
    Op { method: "get", path: "/api/v1/images/{id}", id: "getImage", summary: "One image", scope: Some("read"), body: None, ok: (200, "Image"), query: &[] },
    Op { method: "delete", path: "/api/v1/images/{id}", id: "deleteImage", summary: "Delete an image no release lists (409 naming the releases and rollouts otherwise); blobs no image or delta references are removed (audited)", scope: Some("release:write"), body: None, ok: (200, "Deleted"), query: &[] },
    Op { method: "delete", path: "/api/v1/releases/{id}", id: "deleteRelease", summary: "Delete a release no rollout uses (409 naming the rollouts otherwise), except the one holding the newest signed targets (audited)", scope: Some("release:write"), body: None, ok: (200, "Deleted"), query: &[] },
    Op { method: "post", path: "/api/v1/releases", id: "createRelease", summary: "Create a release; targets signed by the server or uploaded pre-signed and verified against root", scope: Some("release:write"), body: Some(("application/json", "CreateRelease")), ok: (201, "Release"), query: &[] },
    Op { method: "get", path: "/api/v1/releases", id: "listReleases", summary: "List releases", scope: Some("read"), body: None, ok: (200, "ReleaseList"), query: &["version", "limit", "cursor", "order"] },
    Op { method: "get", path: "/api/v1/releases/{id}", id: "getRelease", summary: "One release with its signed targets envelope", scope: Some("read"), body: None, ok: (200, "Release"), query: &[] },
    Op { method: "post", path: "/api/v1/vehicles", id: "registerVehicle", summary: "Provision a vehicle: id, ECUs, device public key, tags", scope: Some("admin"), body: Some(("application/json", "RegisterVehicle")), ok: (201, "Vehicle"), query: &[] },
    Op { method: "post", path: "/api/v1/vehicles:bulk", id: "registerVehicles", summary: "Provision up to 10,000 vehicles in one transaction, all or nothing; a bad entry is named by index and field (vehicles[i].field)", scope: Some("admin"), body: Some(("application/json", "RegisterVehicles")), ok: (201, "BulkRegistered"), query: &[] },
    Op { method: "get", path: "/api/v1/vehicles", id: "listVehicles", summary: "List vehicles with filters", scope: Some("read"), body: None, ok: (200, "VehicleList"), query: &["hardware_id", "tag", "tags", "installed_version", "limit", "cursor"] },
    Op { method: "get", path: "/api/v1/vehicles/{id}", id: "getVehicle", summary: "One vehicle: installed versions, last check-in, deployment history", scope: Some("read"), body: None, ok: (200, "VehicleDetail"), query: &[] },
    Op { method: "put", path: "/api/v1/vehicles/{id}/tags", id: "retagVehicle", summary: "Replace a vehicle's tags (audited); rollouts select by the new tags from its next check-in", scope: Some("admin"), body: Some(("application/json", "Retag")), ok: (200, "Vehicle"), query: &[] },
    Op { method: "post", path: "/api/v1/vehicles/{id}/rotate-key", id: "rotateVehicleKey", summary: "Replace a vehicle's device key (audited): the old key's signatures are refused from now on", scope: Some("admin"), body: Some(("application/json", "RotateKey")), ok: (200, "Vehicle"), query: &[] },
    Op { method: "post", path: "/api/v1/vehicles/{id}/decommission", id: "decommissionVehicle", summary: "Take a vehicle out of service (audited): its messages are refused and counted, deployments not yet installing are cancelled; 409 if already", scope: Some("admin"), body: None, ok: (200, "Vehicle"), query: &[] },
    Op { method: "post", path: "/api/v1/rollouts", id: "createRollout", summary: "Create a rollout (draft)", scope: Some("rollout:write"), body: Some(("application/json", "CreateRollout")), ok: (201, "Rollout"), query: &[] },
    Op { method: "post", path: "/api/v1/rollouts:dry-run", id: "dryRunRollout", summary: "The vehicles per phase a rollout with this spec would assign (counts and a sample of ids), computed as the director does; creates nothing", scope: Some("rollout:write"), body: Some(("application/json", "CreateRollout")), ok: (200, "DryRun"), query: &[] },
    Op { method: "get", path: "/api/v1/rollouts", id: "listRollouts", summary: "List rollouts", scope: Some("read"), body: None, ok: (200, "RolloutList"), query: &["state", "release_id", "limit", "cursor", "order"] },
    Op { method: "get", path: "/api/v1/rollouts/{id}", id: "getRollout", summary: "One rollout", scope: Some("read"), body: None, ok: (200, "Rollout"), query: &[] },
    Op { method: "get", path: "/api/v1/rollouts/{id}/status", id: "getRolloutStatus", summary: "Per-phase counts and breaker state", scope: Some("read"), body: None, ok: (200, "RolloutStatus"), query: &[] },
    Op { method: "post", path: "/api/v1/rollouts/{id}/start", id: "startRollout", summary: "Start (enqueues delta builds)", scope: Some("rollout:write"), body: None, ok: (200, "Rollout"), query: &[] },
    Op { method: "post", path: "/api/v1/rollouts/{id}/pause", id: "pauseRollout", summary: "Pause: no new vehicles", scope: Some("rollout:write"), body: None, ok: (200, "Rollout"), query: &[] },
    Op { method: "post", path: "/api/v1/rollouts/{id}/resume", id: "resumeRollout", summary: "Resume (half-opens an open breaker)", scope: Some("rollout:write"), body: None, ok: (200, "Rollout"), query: &[] },
    Op { method: "post", path: "/api/v1/rollouts/{id}/abort", id: "abortRollout", summary: "Abort: cancel vehicles not yet installing", scope: Some("rollout:write"), body: None, ok: (200, "Rollout"), query: &[] },
    Op { method: "post", path: "/api/v1/rollouts/{id}/rollback", id: "rollbackRollout", summary: "Roll back: tell updated vehicles to return to their previous image", scope: Some("rollout:write"), body: None, ok: (200, "Rollout"), query: &[] },
    Op { method: "post", path: "/api/v1/rollouts/{id}/complete", id: "completeRollout", summary: "Complete: no new vehicles; deployments under way finish", scope: Some("rollout:write"), body: None, ok: (200, "Rollout"), query: &[] },
    Op { method: "post", path: "/api/v1/rollouts/{id}/advance", id: "advanceRollout", summary: "Open the next phase without waiting for the current phase's gate (audited)", scope: Some("rollout:write"), body: None, ok: (200, "Rollout"), query: &[] },
    Op { method: "get", path: "/api/v1/rollouts/{id}/deployments", id: "listDeployments", summary: "A page of the rollout's deployments, by vehicle and ECU: status, phase, attempts", scope: Some("read"), body: None, ok: (200, "DeploymentPage"), query: &["state", "phase", "limit", "cursor"] },
    Op { method: "get", path: "/api/v1/rollouts/{id}/deployments/{vehicle}", id: "getVehicleDeployments", summary: "One vehicle's deployments in the rollout, each with its history, and the actions allowed now", scope: Some("read"), body: None, ok: (200, "VehicleDeployments"), query: &[] },
    Op { method: "post", path: "/api/v1/rollouts/{id}/deployments/{vehicle}/cancel", id: "cancelDeployment", summary: "Cancel the vehicle's deployments not yet installing (audited; the vehicle is told at once); 409 lists the allowed actions", scope: Some("rollout:write"), body: None, ok: (200, "DeploymentList"), query: &[] },
    Op { method: "post", path: "/api/v1/rollouts/{id}/deployments/{vehicle}/retry", id: "retryDeployment", summary: "Hand the vehicle's failed or cancelled deployments out again in a running rollout (audited); 409 lists the allowed actions", scope: Some("rollout:write"), body: None, ok: (200, "DeploymentList"), query: &[] },
    Op { method: "get", path: "/api/v1/delta-jobs", id: "listDeltaJobs", summary: "Delta builds and their progress", scope: Some("read"), body: None, ok: (200, "DeltaJobList"), query: &["rollout_id", "status", "limit", "cursor", "order"] },
    Op { method: "get", path: "/api/v1/audit", id: "listAudit", summary: "Audit log of mutating calls, newest first; filters by actor, action, target (subject id) and time", scope: Some("admin"), body: None, ok: (200, "AuditList"), query: &["limit", "cursor", "actor", "action", "target", "since", "until"] },
    Op { method: "get", path: "/api/v1/tokens", id: "listTokens", summary: "API tokens (never their values), oldest first", scope: Some("admin"), body: None, ok: (200, "TokenList"), query: &["limit"] },
    Op { method: "post", path: "/api/v1/tokens/{id}/revoke", id: "revokeToken", summary: "Revoke a token at once (audited); 409 if already revoked", scope: Some("admin"), body: None, ok: (200, "Token"), query: &[] },
    Op { method: "get", path: "/api/v1/targets", id: "getTargets", summary: "The newest signed targets metadata (cumulative: every released image), decoded and as an envelope", scope: Some("read"), body: None, ok: (200, "Targets"), query: &[] },
    Op { method: "get", path: "/v1/metadata/targets.json", id: "getVehicleTargets", summary: "The newest targets envelope, byte for byte; vehicle request credential (PROTOCOL.md §10) or read token", scope: None, body: None, ok: (200, "Object"), query: &[] },
    Op { method: "get", path: "/v1/metadata/root/{version}", id: "getVehicleRoot", summary: "Root metadata version N ({version} = N.json), for walking the root chain; vehicle request credential or read token", scope: None, body: None, ok: (200, "Object"), query: &[] },
    Op { method: "get", path: "/v1/blobs/{sha256}", id: "getBlob", summary: "Download a blob (Range, If-Range); a vehicle (request credential) only a blob its current or recent directives name, a read token any", scope: None, body: None, ok: (200, ""), query: &[] },
];

fn obj(required: &[&str], props: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": props })
}

fn array_of(name: &str) -> Value {
    json!({ "type": "array", "items": { "$ref": format!("#/components/schemas/{name}") } })
}

/// One page of a list (`super::page::Page`).
fn page_of(name: &str) -> Value {
    obj(
        &["items", "next_cursor"],
        json!({ "items": array_of(name), "next_cursor": { "type": ["string", "null"] } }),
    )
}

/// A name (`validate::is_name`).
fn name_schema() -> Value {
    json!({ "type": "string", "pattern": validate::NAME_PATTERN, "minLength": 1, "maxLength": validate::MAX_NAME_LEN })
}

fn vehicle_id_schema() -> Value {
    json!({ "type": "string", "pattern": validate::VEHICLE_ID_PATTERN, "minLength": 1, "maxLength": validate::MAX_NAME_LEN })
}

fn int_range(min: u64, max: u64) -> Value {
    json!({ "type": "integer", "minimum": min, "maximum": max })
}

/// A list of distinct names, at most `max`.
fn names_schema(max: usize) -> Value {
    json!({ "type": "array", "maxItems": max, "uniqueItems": true, "items": name_schema() })
}

/// The schema of a query parameter, with the limits the handlers enforce.
fn query_schema(op: &str, name: &str) -> Value {
    match name {
        "state" if op == "listDeployments" => {
            json!({ "enum": crate::director::DeploymentStatus::ALL.map(|s| s.as_str()) })
        }
        "limit" => json!({ "type": "integer", "minimum": validate::LIMIT_RANGE.0,
                           "maximum": validate::LIMIT_RANGE.1, "default": validate::DEFAULT_LIMIT }),
        "order" => {
            json!({ "enum": ["asc", "desc"], "default": "asc", "description": "by creation time, then id" })
        }
        "since" | "until" => {
            json!({ "type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$" })
        }
        "actor" | "action" | "target" => {
            json!({ "type": "string", "minLength": 1, "maxLength": 256 })
        }
        "tags" => {
            json!({ "type": "string", "description": "comma-separated names; vehicles with every one" })
        }
        "release_id" => json!({ "type": "string", "pattern": "^rel_[0-9a-f]{16}$" }),
        "status" => json!({ "enum": ["queued", "running", "done", "skipped", "failed"] }),
        "state" => {
            json!({ "enum": ["draft", "running", "paused", "aborted", "completed", "rolled_back"] })
        }
        "rollout_id" => json!({ "type": "string", "pattern": "^ro_[0-9a-f]{16}$" }),
        "cursor" => {
            json!({ "type": "string", "maxLength": 1024, "description": "next_cursor of the previous page" })
        }
        "phase" => {
            json!({ "type": "integer", "minimum": 0, "maximum": crate::rollout::MAX_PHASES - 1 })
        }
        _ => name_schema(),
    }
}

/// The schemas of a rollout's deployments and of the dry run.
fn management_schemas() -> Value {
    let s = json!({ "type": "string" });
    let i = json!({ "type": "integer", "minimum": 0 });
    json!({
        "Deleted": obj(&["id", "blobs_removed"], json!({ "id": s, "blobs_removed": { "type": "array", "items": s } })),
        "Retag": obj(&["tags"], json!({ "tags": names_schema(validate::MAX_TAGS) })),
        "RotateKey": obj(&["public_key"], json!({ "public_key": { "type": "string", "pattern": "^[0-9a-f]{64}$" } })),
        "DeploymentList": array_of("Deployment"),
        "DeploymentPage": page_of("Deployment"),
        "DeploymentEvent": obj(&["at", "status", "source"], json!({ "at": s, "status": s, "sequence": { "type": ["integer", "null"] }, "reason_code": { "type": ["string", "null"] }, "source": s })),
        "VehicleDeployments": obj(&["rollout_id", "vehicle_id", "allowed_actions", "deployments"], json!({ "rollout_id": s, "vehicle_id": s,
            "allowed_actions": { "type": "array", "items": { "enum": ["cancel", "retry"] } },
            "deployments": { "type": "array", "items": { "allOf": [ { "$ref": "#/components/schemas/Deployment" },
                obj(&["events"], json!({ "events": array_of("DeploymentEvent") })) ] } } })),
        "DryRun": obj(&["salt", "vehicles", "phases"], json!({ "salt": s, "vehicles": i,
            "phases": { "type": "array", "items": obj(&["index", "name", "percent", "vehicles", "sample"], json!({
                "index": i, "name": s, "percent": { "type": "number" }, "vehicles": i,
                "sample": { "type": "array", "maxItems": crate::engine::status::DRY_RUN_SAMPLE, "items": s } })) } })),
    })
}

fn schemas() -> Value {
    let mut all = base_schemas();
    if let (Some(all), Value::Object(more)) = (all.as_object_mut(), management_schemas()) {
        all.extend(more);
    }
    all
}

fn base_schemas() -> Value {
    let s = json!({ "type": "string" });
    let i = json!({ "type": "integer", "minimum": 0 });
    let strings = json!({ "type": "array", "items": { "type": "string" } });
    let name = name_schema();
    let counter = int_range(0, validate::MAX_COUNTER);
    let duration = int_range(0, validate::MAX_DURATION_SECONDS);
    let u32_min1 = int_range(1, u64::from(u32::MAX));
    let percent = json!({ "type": "number", "minimum": 0, "maximum": 100 });
    let any = json!({});
    json!({
        "Object": { "type": "object" },
        "Problem": obj(&["type", "title", "status", "detail"], json!({
            "type": s, "title": s, "status": i, "detail": s,
            "reason": { "type": "string", "description": "Why a vehicle credential was refused" },
            "errors": { "type": "array", "items": obj(&["field", "expected", "got"], json!({ "field": s, "expected": s, "got": s })) },
        })),
        "Targets": obj(&["version", "expires", "targets", "envelope"], json!({
            "version": i, "expires": s,
            "targets": { "type": "object", "description": "image name → {hardware_id, version, security_version, length, sha256}" },
            "envelope": { "type": "object", "description": "DSSE envelope (PROTOCOL.md)" } })),
        "Health": obj(&["status"], json!({ "status": s })),
        "Ready": obj(&["status", "database", "blob_store", "broker"], json!({ "status": s, "database": s, "blob_store": s, "broker": s })),
        "Image": obj(&["id", "name", "hardware_id", "version", "length", "sha256", "created_at"], json!({
            "id": s, "name": s, "hardware_id": s, "version": s, "length": i, "sha256": s, "created_at": s })),
        "ImageList": page_of("Image"),
        "CreateRelease": obj(&["name", "version", "security_version", "images"], json!({
            "name": name, "version": name, "security_version": counter,
            "images": { "type": "array", "minItems": 1, "maxItems": super::releases::MAX_IMAGES, "items": { "type": "string", "pattern": "^img_[0-9a-f]{16}$" } },
            "targets": { "description": "DSSE envelope of targets metadata signed offline", "type": "object" },
            "expires_in_days": int_range(u64::from(validate::EXPIRES_IN_DAYS.0), u64::from(validate::EXPIRES_IN_DAYS.1)) })),
        "Release": obj(&["id", "name", "version", "security_version", "targets_version", "signed_by", "images", "targets"], json!({
            "id": s, "name": s, "version": s, "security_version": i, "targets_version": i, "signed_by": s,
            "images": { "type": "array", "items": obj(&[], json!({ "hardware_id": s, "image_id": s, "name": s, "version": s, "length": i, "sha256": s })) },
            "targets": any, "created_at": s })),
        "ReleaseList": page_of("Release"),
        "RegisterVehicle": obj(&["id", "public_key", "ecus"], json!({
            "id": vehicle_id_schema(), "public_key": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
            "tags": names_schema(validate::MAX_TAGS),
            "ecus": { "type": "array", "minItems": 1, "maxItems": 32, "items": obj(&["ecu", "hardware_id"], json!({ "ecu": name, "hardware_id": name })) } })),
        "RegisterVehicles": obj(&["vehicles"], json!({
            "vehicles": { "type": "array", "minItems": 1, "maxItems": 10000, "items": { "$ref": "#/components/schemas/RegisterVehicle" } } })),
        "BulkRegistered": obj(&["registered"], json!({ "registered": i })),
        "Vehicle": obj(&["id", "public_key", "tags", "ecus"], json!({
            "id": s, "public_key": s, "tags": strings, "created_at": s, "last_seen_at": s, "agent_state": s, "director_version": i,
            "decommissioned_at": { "type": ["string", "null"] },
            "ecus": { "type": "array", "items": obj(&[], json!({ "ecu": s, "hardware_id": s, "installed_version": s, "installed_sha256": s, "installed_length": i })) } })),
        "VehicleList": page_of("Vehicle"),
        "VehicleDetail": { "allOf": [ { "$ref": "#/components/schemas/Vehicle" },
            obj(&["deployments"], json!({ "deployments": array_of("Deployment") })) ] },
        "Deployment": obj(&[], json!({ "id": s, "rollout_id": s, "vehicle_id": s, "ecu": s, "phase": i, "status": s, "from_sha256": s, "reason_code": s, "assigned_at": s, "updated_at": s })),
        "CreateRollout": obj(&["name", "release_id", "phases"], json!({
            "name": name, "release_id": { "type": "string", "pattern": "^rel_[0-9a-f]{16}$" },
            "selector": obj(&[], json!({ "hardware_ids": names_schema(validate::MAX_SELECTOR_VALUES),
                "current_versions": names_schema(validate::MAX_SELECTOR_VALUES), "tags": names_schema(validate::MAX_SELECTOR_VALUES),
                "vehicle_ids": { "type": "array", "maxItems": validate::MAX_SELECTOR_VEHICLES, "uniqueItems": true, "items": vehicle_id_schema() } })),
            "phases": { "type": "array", "minItems": 1, "maxItems": 20, "items": obj(&["name", "percent"], json!({
                "name": name, "percent": { "type": "number", "exclusiveMinimum": 0, "maximum": 100 }, "min_soak_seconds": duration,
                "success_threshold_percent": percent, "error_threshold_percent": percent })) },
            "rate_limit": obj(&[], json!({ "maximum_per_minute": u32_min1, "exponential": obj(&[], json!({
                "base_rate_per_minute": u32_min1, "increment_factor": { "type": "number", "exclusiveMinimum": 1, "maximum": 5 }, "increase_after_succeeded": u32_min1 })) })),
            "abort_criteria": obj(&[], json!({ "failure_type": { "enum": ["all", "failed", "rolled_back", "timed_out"] },
                "threshold_percentage": percent, "min_number_of_executed_things": u32_min1, "in_progress_timeout_seconds": duration,
                "action": { "enum": ["pause", "abort", "rollback"] } })),
            "preconditions": obj(&[], json!({ "parked": { "type": "boolean" }, "min_state_of_charge_percent": int_range(0, 100), "network": name })),
            "maintenance_window": obj(&["start_utc", "end_utc"], json!({ "start_utc": s, "end_utc": s })),
            "retry": obj(&[], json!({ "max_attempts": int_range(1, 10), "backoff_seconds": duration })),
            "salt": { "type": "string", "pattern": "^[0-9a-f]{32}$", "description": "cohort salt (random unless given; a dry run's salt reproduces its cohorts)" } })),
        "Rollout": obj(&["id", "name", "release_id", "spec", "state", "current_phase", "breaker_state"], json!({
            "id": s, "name": s, "release_id": s, "spec": any, "salt": s, "state": s, "current_phase": i,
            "breaker_state": { "enum": ["closed", "open", "half_open"] }, "breaker_reason": s, "created_at": s, "updated_at": s })),
        "RolloutList": page_of("Rollout"),
        "RolloutStatus": obj(&["rollout", "phases"], json!({
            "rollout": { "$ref": "#/components/schemas/Rollout" },
            "phases": { "type": "array", "items": obj(&[], json!({
                "index": i, "name": s, "percent": { "type": "number" }, "active": { "type": "boolean" },
                "eligible": i, "assigned": i, "downloading": i, "installed": i, "committed": i, "failed": i, "rolled_back": i, "cancelled": i })) } })),
        "DeltaJob": obj(&["id", "status"], json!({ "id": s, "rollout_id": s, "hardware_id": s, "source_sha256": s, "target_sha256": s,
            "status": { "enum": ["queued", "running", "done", "skipped", "failed"] }, "attempts": i, "delta_sha256": s, "delta_length": i, "error": s })),
        "DeltaJobList": page_of("DeltaJob"),
        "AuditEntry": obj(&["id", "at", "actor", "action", "subject"], json!({ "id": i, "at": s, "actor": s, "action": s, "subject": s, "detail": any, "request_id": s })),
        "AuditList": page_of("AuditEntry"),
        "Token": obj(&["id", "name", "scopes", "created_at"], json!({ "id": s, "name": s, "scopes": strings, "created_at": s,
            "revoked_at": { "type": ["string", "null"] }, "expires_at": { "type": ["string", "null"] } })),
        "TokenList": array_of("Token"),
    })
}

fn problem_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for op in OPS {
        let mut parameters: Vec<Value> = Vec::new();
        for segment in op.path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                parameters.push(json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }));
            }
        }
        for name in op.query {
            let required = op.id == "uploadImage" && *name != "name";
            parameters.push(json!({ "name": name, "in": "query", "required": required, "schema": query_schema(op.id, name) }));
        }
        let ok_content = match op.ok.1 {
            "" if op.path == "/metrics" => {
                json!({ "text/plain": { "schema": { "type": "string" } } })
            }
            "" => {
                json!({ "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } })
            }
            name => {
                json!({ "application/json": { "schema": { "$ref": format!("#/components/schemas/{name}") } } })
            }
        };
        let mut responses = Map::new();
        responses.insert(
            op.ok.0.to_string(),
            json!({ "description": "Success", "content": ok_content }),
        );
        if op.path.starts_with("/v1/") {
            responses.insert(
                "401".into(),
                problem_response("Missing or invalid token, or a vehicle credential refused (`reason`: malformed, retired_version, wrong_method, wrong_target, outside_window, unknown_vehicle, bad_signature)"),
            );
            responses.insert(
                "403".into(),
                problem_response("Token lacks the read scope, or (blobs) no current or recent directive of the vehicle names the blob"),
            );
            responses.insert("404".into(), problem_response("Not found"));
            responses.insert("422".into(), problem_response("Malformed path parameter"));
        }
        if op.path == "/v1/blobs/{sha256}" {
            responses.insert(
                "206".into(),
                json!({ "description": "Partial content (Range)" }),
            );
            responses.insert("416".into(), problem_response("Range not satisfiable"));
        }
        if op.path == "/api/v1/targets" {
            responses.insert("404".into(), problem_response("No release yet"));
        }
        if op.scope.is_some() {
            responses.insert(
                "401".into(),
                problem_response("Missing or invalid bearer token"),
            );
            responses.insert(
                "403".into(),
                problem_response("Token lacks the required scope"),
            );
        }
        if op.path.contains("{id}") {
            responses.insert("404".into(), problem_response("Not found"));
            responses.insert("422".into(), problem_response("Malformed id"));
        }
        if !op.query.is_empty() {
            responses.insert("400".into(), problem_response("Unknown query parameter"));
            responses.insert(
                "422".into(),
                problem_response("A query parameter out of its range or pattern"),
            );
        }
        if !matches!(op.path, "/healthz" | "/readyz") {
            responses.insert(
                "408".into(),
                problem_response("The request outlived the request timeout"),
            );
            responses.insert(
                "503".into(),
                json!({ "description": "At the concurrency limit; retry after Retry-After seconds",
                        "headers": { "Retry-After": { "schema": { "type": "integer" } } },
                        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } }),
            );
        }
        if op.path == "/readyz" {
            responses.insert(
                "503".into(),
                json!({ "description": "Not ready (body says which dependency); retry after Retry-After seconds",
                        "headers": { "Retry-After": { "schema": { "type": "integer" } } },
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Ready" } } } }),
            );
        }
        if op.method == "delete" {
            responses.insert(
                "409".into(),
                problem_response("Still in use: the problem names by what"),
            );
        }
        if matches!(op.method, "post" | "put") {
            responses.insert("400".into(), problem_response("Malformed request"));
            responses.insert(
                "409".into(),
                problem_response("Conflicts with the current state"),
            );
            responses.insert("413".into(), problem_response("Body too large"));
            responses.insert("415".into(), problem_response("Wrong content type"));
            responses.insert(
                "422".into(),
                problem_response("Validation failed: field, expected, got"),
            );
        }
        let mut operation = json!({
            "operationId": op.id,
            "summary": op.summary,
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(scope) = op.scope {
            operation["security"] = json!([{ "bearer": [scope] }]);
            operation["description"] = json!(format!(
                "Requires a bearer token with the `{scope}` scope (admin grants all)."
            ));
        } else if op.path.starts_with("/v1/") {
            operation["security"] = json!([{ "vehicle": [] }, { "bearer": ["read"] }]);
        } else {
            operation["security"] = json!([]);
        }
        if let Some((content_type, schema)) = op.body {
            let schema = if schema.is_empty() {
                json!({ "type": "string", "format": "binary" })
            } else {
                json!({ "$ref": format!("#/components/schemas/{schema}") })
            };
            operation["requestBody"] =
                json!({ "required": true, "content": { content_type: { "schema": schema } } });
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "OTA orchestration server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Release engineers' API: images, releases, vehicles, rollouts, audit. Errors are application/problem+json.",
        },
        "servers": [ { "url": "/" } ],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "vehicle": { "type": "http", "scheme": "OTA-Vehicle-2",
                             "description": "Vehicle request credential signed by the device key over the method and path (PROTOCOL.md §10)" },
            },
        },
    })
}

/// (method, path) of every documented operation.
pub fn documented_routes() -> Vec<(String, String)> {
    let doc = document();
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            if let Some(item) = item.as_object() {
                for method in item.keys() {
                    out.push((method.clone(), path.clone()));
                }
            }
        }
    }
    out.sort();
    out
}

/// Structural validation of the document: the OpenAPI 3.1 fields we rely on are present,
/// operation ids are unique, every path parameter is declared, every `$ref` resolves.
/// Returns the problems found (empty = valid).
pub fn validate(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if doc["openapi"]
        .as_str()
        .is_none_or(|v| !v.starts_with("3.1"))
    {
        problems.push("openapi must be 3.1.x".to_owned());
    }
    for field in ["title", "version"] {
        if !doc["info"][field].is_string() {
            problems.push(format!("info.{field} missing"));
        }
    }
    let mut ids = std::collections::BTreeSet::new();
    let methods = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        if !path.starts_with('/') {
            problems.push(format!("path {path} must start with /"));
        }
        for (method, op) in item.as_object().into_iter().flatten() {
            if !methods.contains(&method.as_str()) {
                problems.push(format!("{path}: unknown method {method}"));
            }
            match op["operationId"].as_str() {
                Some(id) if ids.insert(id.to_owned()) => {}
                _ => problems.push(format!("{method} {path}: missing or duplicate operationId")),
            }
            if op["responses"].as_object().is_none_or(|r| r.is_empty()) {
                problems.push(format!("{method} {path}: no responses"));
            }
            for segment in path.split('/') {
                if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    let declared = op["parameters"].as_array().is_some_and(|ps| {
                        ps.iter().any(|p| {
                            p["name"] == name && p["in"] == "path" && p["required"] == true
                        })
                    });
                    if !declared {
                        problems.push(format!(
                            "{method} {path}: path parameter {name} not declared"
                        ));
                    }
                }
            }
        }
    }
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(doc, &mut all);
    for r in all {
        let resolved = r
            .strip_prefix("#/components/schemas/")
            .is_some_and(|name| doc["components"]["schemas"].get(name).is_some());
        if !resolved {
            problems.push(format!("unresolved $ref {r}"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_valid_and_matches_the_mounted_routes() {
        let doc = document();
        assert_eq!(
            validate(&doc),
            Vec::<String>::new(),
            "the OpenAPI document must validate"
        );
        let mut mounted: Vec<(String, String)> = super::super::routes()
            .mounted
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        mounted.sort();
        assert_eq!(
            documented_routes(),
            mounted,
            "every mounted route must be documented and vice versa"
        );
    }

    #[test]
    fn validator_catches_broken_documents() {
        let mut doc = document();
        doc["paths"]["/api/v1/images/{id}"]["get"]["parameters"] = json!([]);
        doc["components"]["schemas"]
            .as_object_mut()
            .unwrap()
            .remove("Image");
        let problems = validate(&doc);
        assert!(
            problems.iter().any(|p| p.contains("path parameter id")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("unresolved $ref")),
            "{problems:?}"
        );
    }
}
