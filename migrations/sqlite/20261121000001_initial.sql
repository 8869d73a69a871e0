-- Initial schema (SQLite). Keep column names and types in step with ../postgres.
-- Times are unix milliseconds (BIGINT); JSON documents are TEXT. The store reads both
-- backends through sqlx's Any driver, so only types it maps on both sides are used:
-- TEXT and BIGINT (no booleans, no native timestamps, no numeric aggregates).

CREATE TABLE images (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    hardware_id TEXT NOT NULL,
    version     TEXT NOT NULL,
    length      BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    UNIQUE (hardware_id, version)
);

CREATE TABLE releases (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    version          TEXT NOT NULL,
    security_version BIGINT NOT NULL,
    targets_version  BIGINT NOT NULL,
    targets_envelope TEXT NOT NULL,
    signed_by        TEXT NOT NULL,
    created_ms       BIGINT NOT NULL
);

CREATE TABLE release_images (
    release_id  TEXT NOT NULL REFERENCES releases (id),
    hardware_id TEXT NOT NULL,
    image_id    TEXT NOT NULL REFERENCES images (id),
    PRIMARY KEY (release_id, hardware_id)
);

CREATE TABLE vehicles (
    id               TEXT PRIMARY KEY,
    public_key       TEXT NOT NULL,
    tags             TEXT NOT NULL,
    created_ms       BIGINT NOT NULL,
    last_seen_ms     BIGINT,
    agent_state      TEXT,
    director_version BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE vehicle_ecus (
    vehicle_id        TEXT NOT NULL REFERENCES vehicles (id),
    ecu               TEXT NOT NULL,
    hardware_id       TEXT NOT NULL,
    installed_version TEXT,
    installed_sha256  TEXT,
    installed_length  BIGINT,
    PRIMARY KEY (vehicle_id, ecu)
);

CREATE TABLE rollouts (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    release_id       TEXT NOT NULL REFERENCES releases (id),
    spec             TEXT NOT NULL,
    salt             TEXT NOT NULL,
    state            TEXT NOT NULL,
    current_phase    BIGINT NOT NULL DEFAULT 0,
    phase_started_ms BIGINT,
    breaker_state    TEXT NOT NULL DEFAULT 'closed',
    breaker_reason   TEXT,
    window_start_ms  BIGINT NOT NULL DEFAULT 0,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL
);

CREATE TABLE deployments (
    id            TEXT PRIMARY KEY,
    rollout_id    TEXT NOT NULL REFERENCES rollouts (id),
    vehicle_id    TEXT NOT NULL REFERENCES vehicles (id),
    ecu           TEXT NOT NULL,
    phase_index   BIGINT NOT NULL,
    status        TEXT NOT NULL,
    from_sha256   TEXT,
    last_sequence BIGINT NOT NULL DEFAULT 0,
    reason_code   TEXT,
    assigned_ms   BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL,
    UNIQUE (rollout_id, vehicle_id, ecu)
);
CREATE INDEX deployments_by_vehicle ON deployments (vehicle_id);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    revoked_ms   BIGINT
);

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms      BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    detail     TEXT NOT NULL,
    request_id TEXT
);

CREATE TABLE delta_jobs (
    id            TEXT PRIMARY KEY,
    rollout_id    TEXT,
    hardware_id   TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    target_sha256 TEXT NOT NULL,
    status        TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    delta_sha256  TEXT,
    delta_length  BIGINT,
    error         TEXT,
    created_ms    BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL,
    UNIQUE (source_sha256, target_sha256)
);
