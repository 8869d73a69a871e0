-- Replay protection of check-ins: the newest accepted check-in's send time and nonce.
ALTER TABLE vehicles ADD COLUMN last_checkin_sent_ms BIGINT;
ALTER TABLE vehicles ADD COLUMN last_checkin_nonce TEXT;
