-- Retry policy: how many times a deployment has been handed out to its vehicle.
ALTER TABLE deployments ADD COLUMN attempts BIGINT NOT NULL DEFAULT 1;
