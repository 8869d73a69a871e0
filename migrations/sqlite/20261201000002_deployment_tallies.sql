-- Incremental rollout aggregates; see the PostgreSQL migration of the same name for the
-- why. SQLite has one writer at a time, so here the triggers keep one row per key up to
-- date (no appended deltas to fold).
ALTER TABLE deployments ADD COLUMN window_ms BIGINT NOT NULL DEFAULT -1;
UPDATE deployments SET window_ms = (SELECT r.window_start_ms FROM rollouts r WHERE r.id = deployments.rollout_id)
WHERE assigned_ms >= (SELECT r.window_start_ms FROM rollouts r WHERE r.id = deployments.rollout_id);

CREATE TABLE deployment_tallies (
    rollout_id  TEXT NOT NULL,
    phase_index BIGINT NOT NULL,
    status      TEXT NOT NULL,
    window_ms   BIGINT NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, phase_index, status, window_ms)
);
INSERT INTO deployment_tallies (rollout_id, phase_index, status, window_ms, n)
SELECT rollout_id, phase_index, status, window_ms, COUNT(*) FROM deployments
GROUP BY rollout_id, phase_index, status, window_ms;

CREATE TRIGGER deployment_tallies_on_insert AFTER INSERT ON deployments
BEGIN
    INSERT INTO deployment_tallies (rollout_id, phase_index, status, window_ms, n)
    VALUES (NEW.rollout_id, NEW.phase_index, NEW.status, NEW.window_ms, 1)
    ON CONFLICT (rollout_id, phase_index, status, window_ms) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER deployment_tallies_on_update AFTER UPDATE OF rollout_id, phase_index, status, window_ms ON deployments
WHEN OLD.rollout_id IS NOT NEW.rollout_id OR OLD.phase_index IS NOT NEW.phase_index
    OR OLD.status IS NOT NEW.status OR OLD.window_ms IS NOT NEW.window_ms
BEGIN
    UPDATE deployment_tallies SET n = n - 1
    WHERE rollout_id = OLD.rollout_id AND phase_index = OLD.phase_index
      AND status = OLD.status AND window_ms = OLD.window_ms;
    INSERT INTO deployment_tallies (rollout_id, phase_index, status, window_ms, n)
    VALUES (NEW.rollout_id, NEW.phase_index, NEW.status, NEW.window_ms, 1)
    ON CONFLICT (rollout_id, phase_index, status, window_ms) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER deployment_tallies_on_delete AFTER DELETE ON deployments
BEGIN
    UPDATE deployment_tallies SET n = n - 1
    WHERE rollout_id = OLD.rollout_id AND phase_index = OLD.phase_index
      AND status = OLD.status AND window_ms = OLD.window_ms;
END;

CREATE INDEX deployments_unfinished ON deployments (rollout_id, assigned_ms)
    WHERE status NOT IN ('committed', 'failed', 'rolled_back', 'cancelled');
