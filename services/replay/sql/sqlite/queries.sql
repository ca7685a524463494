-- name: get_recording
SELECT id, job, tenant, state, origin, metadata, job_state, event_count,
       start_time, end_time, create_time
FROM recordings
WHERE id = :id;

-- name: recording_by_request_id
SELECT id, job, tenant, state, origin, metadata, job_state, event_count,
       start_time, end_time, create_time, request_hash
FROM recordings
WHERE request_id = :request_id AND request_id <> '';

-- name: insert_recording
-- Inserts nothing when the id or the request_id is taken.
INSERT INTO recordings
    (id, job, tenant, state, origin, metadata, job_state, event_count,
     start_time, end_time, create_time, request_id, request_hash)
VALUES (:id, :job, :tenant, :state, :origin, :metadata, :job_state, :event_count,
        :start_time, :end_time, :create_time, :request_id, :request_hash)
ON CONFLICT DO NOTHING;

-- name: update_recording
UPDATE recordings
SET state = :state, metadata = :metadata, job_state = :job_state,
    event_count = :event_count, start_time = :start_time, end_time = :end_time
WHERE id = :id;

-- name: insert_event
INSERT INTO recording_events (recording_id, position, event_id, event)
VALUES (:recording_id, :position, :event_id, :event);

-- name: list_events
SELECT position, event
FROM recording_events
WHERE recording_id = :recording_id AND position > :after
ORDER BY position
LIMIT :limit;

-- name: get_recorded_job
SELECT job, recording_id, last_sequence
FROM recorded_jobs
WHERE job = :job;

-- name: upsert_recorded_job
INSERT INTO recorded_jobs (job, tenant, recording_id, last_sequence)
VALUES (:job, :tenant, :recording_id, :last_sequence)
ON CONFLICT (job) DO UPDATE SET last_sequence = excluded.last_sequence;

-- name: unfinished_jobs
-- The jobs of recordings still being recorded, for reconciliation after downtime.
SELECT j.job, j.tenant, j.last_sequence
FROM recorded_jobs j JOIN recordings r ON r.id = j.recording_id
WHERE r.state = :recording_state
ORDER BY j.job;

-- name: get_position
SELECT last_cursor FROM recorder_positions WHERE stream = :stream;

-- name: set_position
INSERT INTO recorder_positions (stream, last_cursor) VALUES (:stream, :cursor)
ON CONFLICT (stream) DO UPDATE SET last_cursor = excluded.last_cursor;

-- name: list_recordings
-- Newest first by first event, then by id; the page starts after (:after_start, :after_id).
SELECT id, job, tenant, state, origin, metadata, job_state, event_count,
       start_time, end_time, create_time
FROM recordings
WHERE (:tenant = '' OR tenant = :tenant)
  AND (:job = '' OR job = :job)
  AND (:any_state OR state IN (SELECT value FROM json_each(:states)))
  AND start_time >= :start_after
  AND start_time < :start_before
  AND (:first_page OR start_time < :after_start OR (start_time = :after_start AND id < :after_id))
ORDER BY start_time DESC, id DESC
LIMIT :limit;
