-- API keys: the secret itself is never stored, only its SHA-256.
CREATE TABLE api_keys (
    key_id        TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    principal     TEXT NOT NULL,
    secret_sha256 BYTEA NOT NULL CHECK (octet_length(secret_sha256) = 32),
    create_time   TIMESTAMPTZ NOT NULL,
    revoke_time   TIMESTAMPTZ
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant, create_time, key_id);
