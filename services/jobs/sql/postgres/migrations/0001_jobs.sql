-- Jobs and their event history (which is also the outbox the relay publishes from).

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    principal         TEXT NOT NULL,
    session           TEXT NOT NULL DEFAULT '',
    parent            TEXT NOT NULL DEFAULT '',       -- the parent job's id, '' for none
    state             SMALLINT NOT NULL,              -- agentrt.common.v1.JobState
    request_id        TEXT NOT NULL DEFAULT '',
    request_hash      BYTEA NOT NULL,
    spec              BYTEA NOT NULL,                 -- serialized JobSpec
    result            BYTEA,                          -- serialized JobResult
    failure           BYTEA,                          -- serialized Failure
    usage             BYTEA,                          -- serialized Usage
    checkpoint        BYTEA,                          -- serialized Checkpoint
    attempt           BIGINT NOT NULL DEFAULT 0,
    turns             BIGINT NOT NULL DEFAULT 0,
    lease_id          TEXT,
    lease_owner       TEXT,
    lease_expire_time TIMESTAMPTZ,
    deadline          TIMESTAMPTZ NOT NULL,
    create_time       TIMESTAMPTZ NOT NULL,
    update_time       TIMESTAMPTZ NOT NULL,
    start_time        TIMESTAMPTZ,
    end_time          TIMESTAMPTZ,
    trace_id          TEXT NOT NULL DEFAULT '',
    event_seq         BIGINT NOT NULL DEFAULT 0       -- sequence of the job's last event
);

-- Idempotent creation: one job per tenant and request_id.
CREATE UNIQUE INDEX jobs_request_id ON jobs (tenant, request_id) WHERE request_id <> '';

-- Leasing: QUEUED jobs oldest first.
CREATE INDEX jobs_runnable ON jobs (state, create_time, id);

-- Takeovers: RUNNING jobs by lease expiry.
CREATE INDEX jobs_lease_expiry ON jobs (lease_expire_time) WHERE state = 2;

-- The deadline sweeper: unfinished jobs by deadline.
CREATE INDEX jobs_deadline ON jobs (deadline) WHERE state IN (1, 2, 3);

-- Listing a tenant's jobs newest first, with keyset pagination.
CREATE INDEX jobs_listing ON jobs (tenant, create_time DESC, id DESC);

-- Cancelling a job's children.
CREATE INDEX jobs_parent ON jobs (parent) WHERE parent <> '';

CREATE TABLE job_events (
    row_id    BIGSERIAL PRIMARY KEY,
    job_id    TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    sequence  BIGINT NOT NULL,
    event     BYTEA NOT NULL,                         -- serialized RuntimeEvent
    published BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (job_id, sequence)
);

-- The relay's outbox: unpublished events in insertion order.
CREATE INDEX job_events_unpublished ON job_events (row_id) WHERE NOT published;
