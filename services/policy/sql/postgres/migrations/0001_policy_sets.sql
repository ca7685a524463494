-- Policy sets. `rules` is a serialized agentrt.policy.v1.PolicySet holding only its rules.
CREATE TABLE policy_sets (
    id           TEXT PRIMARY KEY,
    description  TEXT NOT NULL DEFAULT '',
    rules        BYTEA NOT NULL,
    version      BIGINT NOT NULL CHECK (version >= 1),
    request_id   TEXT NOT NULL DEFAULT '',
    request_hash BYTEA NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    update_time  TIMESTAMPTZ NOT NULL
);

CREATE UNIQUE INDEX policy_sets_by_request_id ON policy_sets (request_id)
WHERE request_id <> '';
