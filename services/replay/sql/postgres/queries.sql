-- name: get_recording
SELECT id, job, tenant, state, origin, metadata, job_state, event_count,
       start_time, end_time, create_time
FROM recordings
WHERE id = $1;

-- name: get_recording_for_update
SELECT id, job, tenant, state, origin, metadata, job_state, event_count,
       start_time, end_time, create_time
FROM recordings
WHERE id = $1
FOR UPDATE;

-- name: get_recordings_for_update
SELECT id, job, tenant, state, origin, metadata, job_state, event_count,
       start_time, end_time, create_time
FROM recordings
WHERE id = ANY($1::text[])
FOR UPDATE;

-- name: recording_by_request_id
SELECT id, job, tenant, state, origin, metadata, job_state, event_count,
       start_time, end_time, create_time, request_hash
FROM recordings
WHERE request_id = $1 AND request_id <> '';

-- name: insert_recording
-- Inserts nothing when the id or the request_id is taken.
INSERT INTO recordings
    (id, job, tenant, state, origin, metadata, job_state, event_count,
     start_time, end_time, create_time, request_id, request_hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: update_recording
UPDATE recordings
SET state = $2, metadata = $3, job_state = $4, event_count = $5, start_time = $6, end_time = $7
WHERE id = $1;

-- name: insert_event
INSERT INTO recording_events (recording_id, position, event_id, event)
VALUES ($1, $2, $3, $4);

-- name: list_events
SELECT position, event
FROM recording_events
WHERE recording_id = $1 AND position > $2
ORDER BY position
LIMIT $3;

-- name: get_recorded_jobs
SELECT job, recording_id, last_sequence
FROM recorded_jobs
WHERE job = ANY($1::text[])
FOR UPDATE;

-- name: upsert_recorded_job
INSERT INTO recorded_jobs (job, tenant, recording_id, last_sequence)
VALUES ($1, $2, $3, $4)
ON CONFLICT (job) DO UPDATE SET last_sequence = excluded.last_sequence;

-- name: unfinished_jobs
-- The jobs of recordings still being recorded, for reconciliation after downtime.
SELECT j.job, j.tenant, j.last_sequence
FROM recorded_jobs j JOIN recordings r ON r.id = j.recording_id
WHERE r.state = $1
ORDER BY j.job;

-- name: get_position
SELECT last_cursor FROM recorder_positions WHERE stream = $1;

-- name: lock_position
-- Serializes recorders: one batch at a time, whichever replica writes it.
INSERT INTO recorder_positions (stream, last_cursor) VALUES ($1, '0')
ON CONFLICT (stream) DO UPDATE SET last_cursor = recorder_positions.last_cursor
RETURNING last_cursor;

-- name: set_position
UPDATE recorder_positions SET last_cursor = $2 WHERE stream = $1;

-- name: list_recordings
-- Newest first by first event, then by id; the page starts after ($7, $8).
SELECT id, job, tenant, state, origin, metadata, job_state, event_count,
       start_time, end_time, create_time
FROM recordings
WHERE ($1 = '' OR tenant = $1)
  AND ($2 = '' OR job = $2)
  AND (cardinality($3::integer[]) = 0 OR state = ANY($3::integer[]))
  AND start_time >= $4
  AND start_time < $5
  AND ($6 OR start_time < $7 OR (start_time = $7 AND id < $8))
ORDER BY start_time DESC, id DESC
LIMIT $9;
