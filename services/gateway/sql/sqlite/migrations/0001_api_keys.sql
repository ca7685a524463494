-- API keys: the secret itself is never stored, only its SHA-256.
-- Times are UTC ISO-8601 text with microseconds ("2025-01-02T03:04:05.000006+00:00"),
-- which sorts in time order.
CREATE TABLE api_keys (
    key_id        TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    principal     TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL CHECK (length(secret_sha256) = 32),
    create_time   TEXT NOT NULL,
    revoke_time   TEXT
) STRICT;

CREATE INDEX api_keys_by_tenant ON api_keys (tenant, create_time, key_id);
