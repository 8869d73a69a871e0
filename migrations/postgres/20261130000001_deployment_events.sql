-- A deployment's history: every status it took, with who moved it (`vehicle` for its
-- own reports and check-ins, `director` for assignments and rollbacks, or the API
-- token's name for operator actions). Keep in step with ../sqlite.
CREATE TABLE deployment_events (
    id            BIGSERIAL PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    at_ms         BIGINT NOT NULL,
    status        TEXT NOT NULL,
    sequence      BIGINT,
    reason_code   TEXT,
    source        TEXT NOT NULL
);
CREATE INDEX deployment_events_by_deployment ON deployment_events (deployment_id, id);
