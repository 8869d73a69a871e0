-- Vehicle blob access (PROTOCOL.md §10): a download looks up the built delta whose blob
-- it names, by its digest.
CREATE INDEX delta_jobs_by_delta ON delta_jobs (delta_sha256);
