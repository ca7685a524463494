-- Queries of the SQLite job store (named :parameters, stdlib sqlite3).
-- Times are integer microseconds since the Unix epoch, UTC. A job's mutable columns are
-- written by save_job only, from rows changed in Python (services/jobs/records.py) inside
-- the same BEGIN IMMEDIATE transaction that read them.

-- name: insert_job
INSERT INTO jobs (
    id, tenant, principal, session, parent, state, request_id, request_hash, spec,
    deadline, create_time, update_time, trace_id, event_seq, root, depth, node, trace_parent
)
VALUES (
    :id, :tenant, :principal, :session, :parent, :state, :request_id, :request_hash, :spec,
    :deadline, :create_time, :update_time, :trace_id, :event_seq, :root, :depth, :node,
    :trace_parent
);

-- name: job_by_request_id
SELECT * FROM jobs WHERE tenant = :tenant AND request_id = :request_id AND request_id <> '';

-- name: get_job
-- :tenant is NULL for an internal caller that sees every tenant.
SELECT * FROM jobs WHERE id = :id AND (:tenant IS NULL OR tenant = :tenant);

-- name: job_tree
-- The job (of :tenant, or any when NULL) and its unfinished descendants of the same tenant.
WITH RECURSIVE tree (id, tenant) AS (
    SELECT id, tenant FROM jobs WHERE id = :id AND (:tenant IS NULL OR tenant = :tenant)
    UNION
    SELECT child.id, child.tenant
    FROM jobs AS child JOIN tree ON child.parent = tree.id AND child.tenant = tree.tenant
    WHERE child.parent <> ''  -- lets the partial index jobs_children serve the join
)
SELECT jobs.* FROM jobs JOIN tree USING (id)
WHERE jobs.id = :id OR jobs.state IN (1, 2, 3);

-- name: takeover_candidates
-- RUNNING jobs whose lease expired by :now, longest expired first.
SELECT * FROM jobs
WHERE state = 2 AND lease_expire_time <= :now
ORDER BY lease_expire_time
LIMIT :limit;

-- name: queued_candidates
SELECT * FROM jobs WHERE state = 1 ORDER BY create_time, id LIMIT :limit;

-- name: expired
-- Unfinished jobs past their deadline at :now, except RUNNING ones whose worker still
-- holds a live lease (that worker times the job out itself).
SELECT * FROM jobs
WHERE state IN (1, 2, 3) AND deadline <= :now
    AND (state <> 2 OR lease_expire_time <= :now)
ORDER BY deadline
LIMIT :limit;

-- name: save_job
-- Writes a changed job's mutable columns; a NULL :checkpoint keeps the stored one.
UPDATE jobs SET
    state = :state,
    result = :result,
    failure = :failure,
    usage = :usage,
    checkpoint = COALESCE(:checkpoint, checkpoint),
    attempt = :attempt,
    turns = :turns,
    lease_id = :lease_id,
    lease_owner = :lease_owner,
    lease_expire_time = :lease_expire_time,
    update_time = :update_time,
    start_time = :start_time,
    end_time = :end_time,
    event_seq = :event_seq,
    children = :children,
    awaiting = :awaiting
WHERE id = :id;

-- name: insert_event
INSERT INTO job_events (job_id, sequence, event) VALUES (:job_id, :sequence, :event);

-- name: heartbeat
UPDATE jobs SET lease_expire_time = :expire
WHERE id = :id AND lease_id = :lease_id AND state = 2;

-- name: job_state
SELECT state FROM jobs WHERE id = :id;

-- name: list_jobs
-- A page of :tenant's jobs strictly before (:before_time, :before_id) in (create_time, id)
-- order, created at or after :after, newest first; :states a JSON array of states ('[]':
-- all), :session ('': all), :limit rows.
SELECT * FROM jobs
WHERE tenant = :tenant
    AND (create_time, id) < (:before_time, :before_id)
    AND create_time >= :after
    AND (:states = '[]' OR state IN (SELECT value FROM json_each(:states)))
    AND (:session = '' OR session = :session)
ORDER BY create_time DESC, id DESC
LIMIT :limit;

-- name: list_children
-- list_jobs of the children of job :parent (served by jobs_children); :root ('': any).
SELECT * FROM jobs
WHERE parent = :parent AND parent <> '' AND tenant = :tenant
    AND (create_time, id) < (:before_time, :before_id)
    AND create_time >= :after
    AND (:states = '[]' OR state IN (SELECT value FROM json_each(:states)))
    AND (:session = '' OR session = :session)
    AND (:root = '' OR root = :root)
ORDER BY create_time DESC, id DESC
LIMIT :limit;

-- name: list_tree
-- list_jobs of the tree of root :root (served by jobs_tree).
SELECT * FROM jobs
WHERE root = :root AND tenant = :tenant
    AND (create_time, id) < (:before_time, :before_id)
    AND create_time >= :after
    AND (:states = '[]' OR state IN (SELECT value FROM json_each(:states)))
    AND (:session = '' OR session = :session)
ORDER BY create_time DESC, id DESC
LIMIT :limit;

-- name: jobs_by_id
SELECT * FROM jobs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: list_events
-- The job's state and its events after sequence :after (at most :limit); no row for an
-- unknown job, one row with a NULL event for a known job with no such events.
SELECT jobs.state, job_events.event
FROM jobs
LEFT JOIN job_events ON job_events.row_id IN (
    SELECT row_id FROM job_events
    WHERE job_id = jobs.id AND sequence > :after
    ORDER BY sequence
    LIMIT :limit
)
WHERE jobs.id = :id AND (:tenant IS NULL OR jobs.tenant = :tenant)
ORDER BY job_events.sequence;

-- name: fetch_unpublished
SELECT row_id, event FROM job_events WHERE published = 0 ORDER BY row_id LIMIT :limit;

-- name: mark_published
UPDATE job_events SET published = 1 WHERE row_id IN (SELECT value FROM json_each(:row_ids));

-- name: insert_action
INSERT INTO actions (
    id, job_id, tenant, kind, state, payload, timeout_outcome, outcome, token_hash,
    expire_time, create_time, resolve_time, resolved_by, request_id
)
VALUES (
    :id, :job_id, :tenant, :kind, :state, :payload, :timeout_outcome, :outcome, :token_hash,
    :expire_time, :create_time, :resolve_time, :resolved_by, :request_id
);

-- name: get_action
SELECT * FROM actions WHERE id = :id AND job_id = :job_id AND tenant = :tenant;

-- name: action_by_token
SELECT * FROM actions WHERE token_hash = :token_hash AND tenant = :tenant;

-- name: save_action
UPDATE actions SET
    state = :state,
    outcome = :outcome,
    resolve_time = :resolve_time,
    resolved_by = :resolved_by,
    request_id = :request_id
WHERE id = :id;

-- name: cancel_pending_actions
-- The pending actions of jobs that were just cancelled or timed out (:job_ids, JSON).
UPDATE actions SET state = 4, resolve_time = :now
WHERE job_id IN (SELECT value FROM json_each(:job_ids)) AND state = 1;

-- name: list_actions
-- A page of job :job_id's actions strictly after (:after_time, :after_id) in
-- (create_time, id) order, oldest first; :states a JSON array of states ('[]': all).
SELECT * FROM actions
WHERE job_id = :job_id
    AND (create_time, id) > (:after_time, :after_id)
    AND (:states = '[]' OR state IN (SELECT value FROM json_each(:states)))
ORDER BY create_time, id
LIMIT :limit;

-- name: expired_actions
-- Up to :limit pending actions that expired by :now, with their jobs.
SELECT * FROM actions
WHERE state = 1 AND expire_time <= :now
ORDER BY expire_time, id
LIMIT :limit;

-- name: live_jobs
-- Jobs QUEUED (1), RUNNING (2) and WAITING (3) by state, with the oldest creation time of
-- each; the runnable index answers it without touching finished jobs.
SELECT state, count(*) AS jobs, min(create_time) AS oldest
FROM jobs
WHERE state IN (1, 2, 3)
GROUP BY state;

-- name: pending_action_count
-- Actions PENDING (1), from the partial index of pending actions' expiry.
SELECT count(*) AS actions FROM actions WHERE state = 1;
