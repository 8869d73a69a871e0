-- Vehicles may be decommissioned: from then on their messages are refused (NULL: in service).
ALTER TABLE vehicles ADD COLUMN decommissioned_ms BIGINT;
