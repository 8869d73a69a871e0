-- Incremental rollout aggregates (issue 9: the consumer keeps per-phase aggregates; issue
-- 8: no cost that grows with the fleet). Supervision read every deployment of a rollout
-- twice per round (counts by phase and status; the breaker window's outcomes): 5-13 ms
-- at 10,000 vehicles, after every consumer batch. Now every change to `deployments`
-- writes its effect on the counts here, in the same transaction, and supervision sums a
-- few rows.
--
-- `window_ms`: the breaker window (`rollouts.window_start_ms`) the deployment was last
-- handed out in. A deployment belongs to the rollout's current window when the two are
-- equal (was: assigned_ms >= window_start_ms; a window only ever starts at "now", so the
-- two agree).
ALTER TABLE deployments ADD COLUMN window_ms BIGINT NOT NULL DEFAULT -1;
UPDATE deployments d SET window_ms = r.window_start_ms
FROM rollouts r WHERE r.id = d.rollout_id AND d.assigned_ms >= r.window_start_ms;

-- Signed counts of deployments by (rollout, phase, status, window). Append-only: a
-- statement on `deployments` appends one row per key it changed (the triggers below), so
-- concurrent writers never wait on one another or deadlock on a hot counter row.
-- Readers sum by key; `Store::compact_tallies` folds a rollout's rows into one per key
-- (DELETE … RETURNING and INSERT in one statement: rows appended meanwhile are kept).
CREATE TABLE deployment_tallies (
    rollout_id  TEXT NOT NULL,
    phase_index BIGINT NOT NULL,
    status      TEXT NOT NULL,
    window_ms   BIGINT NOT NULL,
    n           BIGINT NOT NULL
);
CREATE INDEX deployment_tallies_by_rollout ON deployment_tallies (rollout_id);
INSERT INTO deployment_tallies (rollout_id, phase_index, status, window_ms, n)
SELECT rollout_id, phase_index, status, window_ms, COUNT(*) FROM deployments
GROUP BY rollout_id, phase_index, status, window_ms;

-- One row per key per statement (statement-level triggers over the transition tables):
-- a 256-row batch appends a handful of rows, not 256.
CREATE FUNCTION deployment_tallies_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO deployment_tallies (rollout_id, phase_index, status, window_ms, n)
    SELECT rollout_id, phase_index, status, window_ms, COUNT(*) FROM tally_new
    GROUP BY rollout_id, phase_index, status, window_ms;
    RETURN NULL;
END $$;
CREATE FUNCTION deployment_tallies_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO deployment_tallies (rollout_id, phase_index, status, window_ms, n)
    SELECT rollout_id, phase_index, status, window_ms, SUM(n) FROM (
        SELECT rollout_id, phase_index, status, window_ms, 1 AS n FROM tally_new
        UNION ALL
        SELECT rollout_id, phase_index, status, window_ms, -1 AS n FROM tally_old
    ) AS moved
    GROUP BY rollout_id, phase_index, status, window_ms
    HAVING SUM(n) <> 0;
    RETURN NULL;
END $$;
CREATE FUNCTION deployment_tallies_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO deployment_tallies (rollout_id, phase_index, status, window_ms, n)
    SELECT rollout_id, phase_index, status, window_ms, -COUNT(*) FROM tally_old
    GROUP BY rollout_id, phase_index, status, window_ms;
    RETURN NULL;
END $$;
CREATE TRIGGER deployment_tallies_on_insert AFTER INSERT ON deployments
    REFERENCING NEW TABLE AS tally_new
    FOR EACH STATEMENT EXECUTE FUNCTION deployment_tallies_inserted();
CREATE TRIGGER deployment_tallies_on_update AFTER UPDATE ON deployments
    REFERENCING OLD TABLE AS tally_old NEW TABLE AS tally_new
    FOR EACH STATEMENT EXECUTE FUNCTION deployment_tallies_updated();
CREATE TRIGGER deployment_tallies_on_delete AFTER DELETE ON deployments
    REFERENCING OLD TABLE AS tally_old
    FOR EACH STATEMENT EXECUTE FUNCTION deployment_tallies_deleted();

-- The breaker's timeouts: unfinished deployments of the window handed out before the
-- overdue line. Only unfinished rows are in this index, so the count reads those that
-- are overdue, not the whole rollout.
CREATE INDEX deployments_unfinished ON deployments (rollout_id, assigned_ms)
    WHERE status NOT IN ('committed', 'failed', 'rolled_back', 'cancelled');
