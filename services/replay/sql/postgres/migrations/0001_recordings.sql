-- Recordings: one per top-level job (recorded) or per imported file. Times are
-- microseconds since the Unix epoch, the same on every backend. `metadata` is a
-- serialized agentrt.replay.v1.RunMetadata.
CREATE TABLE recordings (
    id           TEXT PRIMARY KEY,
    job          TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    state        INTEGER NOT NULL,
    origin       INTEGER NOT NULL,
    metadata     BYTEA NOT NULL,
    job_state    INTEGER NOT NULL,
    event_count  BIGINT NOT NULL CHECK (event_count >= 0),
    start_time   BIGINT NOT NULL,
    end_time     BIGINT NOT NULL,
    create_time  BIGINT NOT NULL,
    request_id   TEXT NOT NULL DEFAULT '',
    request_hash BYTEA NOT NULL DEFAULT ''
);

CREATE INDEX recordings_newest ON recordings (start_time DESC, id DESC);
CREATE INDEX recordings_by_tenant ON recordings (tenant, start_time DESC, id DESC);
CREATE UNIQUE INDEX recordings_by_request_id ON recordings (request_id) WHERE request_id <> '';

-- The events of each recording by position (from 1). `event` is a serialized
-- agentrt.common.v1.RuntimeEvent.
CREATE TABLE recording_events (
    recording_id TEXT NOT NULL REFERENCES recordings (id),
    position     BIGINT NOT NULL CHECK (position >= 1),
    event_id     TEXT NOT NULL,
    event        BYTEA NOT NULL,
    PRIMARY KEY (recording_id, position)
);

-- For every job the recorder has seen: its recording and the sequence of its
-- last recorded event, so that a duplicate is recognised and a gap backfilled.
CREATE TABLE recorded_jobs (
    job           TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    recording_id  TEXT NOT NULL REFERENCES recordings (id),
    last_sequence BIGINT NOT NULL
);

-- How far the recorder has read the global event stream; written in the same
-- transaction as the events read.
CREATE TABLE recorder_positions (
    stream TEXT PRIMARY KEY,
    last_cursor TEXT NOT NULL
);
