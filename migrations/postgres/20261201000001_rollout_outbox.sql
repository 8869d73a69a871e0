-- Transactional outbox for rollout events: a rollout change writes its event here in
-- the same transaction as the change; a relay publishes the rows to Kafka in id order
-- and deletes them once Kafka acknowledged them. The id is the event's `event_id`.
CREATE TABLE rollout_outbox (
    id         BIGSERIAL PRIMARY KEY,
    rollout_id TEXT NOT NULL,
    event      TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

-- One relay at a time publishes (so a rollout's events keep their order across
-- replicas): the holder renews its lease every round; another takes over once it lapses.
CREATE TABLE outbox_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
INSERT INTO outbox_leases (name, holder, expires_ms) VALUES ('rollout-events', '', 0);
