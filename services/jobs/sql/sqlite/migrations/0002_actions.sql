-- Human-in-the-loop actions a job waits on. A PENDING action exists only while its job is
-- WAITING; the resume token is kept only as its SHA-256 hash.
-- Times are integer microseconds since the Unix epoch, UTC.

CREATE TABLE actions (
    id                 TEXT PRIMARY KEY,
    job_id             TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    tenant             TEXT NOT NULL,
    kind               INTEGER NOT NULL,             -- agentrt.jobs.v1.ActionKind
    state              INTEGER NOT NULL,             -- agentrt.jobs.v1.Action.State
    payload            BLOB NOT NULL,                -- serialized google.protobuf.Struct
    timeout_outcome    BLOB NOT NULL,                -- serialized google.protobuf.Struct
    outcome            BLOB,                         -- serialized google.protobuf.Struct
    token_hash         BLOB NOT NULL UNIQUE,         -- SHA-256 of the resume token
    expire_time        INTEGER NOT NULL,
    create_time        INTEGER NOT NULL,
    resolve_time       INTEGER,
    resolved_by        TEXT NOT NULL DEFAULT '',
    request_id         TEXT NOT NULL DEFAULT ''       -- idempotency key of the resolution
) STRICT;

-- Listing a job's actions oldest first, with keyset pagination.
CREATE INDEX actions_job ON actions (job_id, create_time, id);

-- The expiry sweeper: pending actions by expiry.
CREATE INDEX actions_expiry ON actions (expire_time) WHERE state = 1;
