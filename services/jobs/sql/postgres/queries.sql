-- Queries of the PostgreSQL job store ($n parameters, asyncpg).
-- A job's mutable columns are written by save_jobs only, from rows changed in Python
-- (services/jobs/records.py) while locked by one of the *_for_update queries.

-- name: insert_job
-- Creates a job with its job.created event; returns no row when the tenant already has a
-- job with this request_id (ON CONFLICT waits for a concurrent creator to finish first).
WITH job AS (
    INSERT INTO jobs (
        id, tenant, principal, session, parent, state, request_id, request_hash, spec,
        deadline, create_time, update_time, trace_id, event_seq, root, depth, node,
        trace_parent
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $15, $16, $17, $18)
    ON CONFLICT (tenant, request_id) WHERE request_id <> '' DO NOTHING
    RETURNING id, event_seq
)
INSERT INTO job_events (job_id, sequence, event)
SELECT id, event_seq, $14 FROM job
RETURNING job_id;

-- name: job_by_request_id
SELECT * FROM jobs WHERE tenant = $1 AND request_id = $2 AND request_id <> '';

-- name: get_job
-- $2 is the tenant, or NULL for an internal caller that sees every tenant.
SELECT * FROM jobs WHERE id = $1 AND ($2::text IS NULL OR tenant = $2);

-- name: job_state
SELECT state FROM jobs WHERE id = $1;

-- name: job_for_update
SELECT * FROM jobs WHERE id = $1 FOR UPDATE;

-- name: tree_members
-- For each job of $1 (of tenant $2, or any when NULL), rows (target, id, parent, kind):
-- the job itself ('job'), each of its descendants of the same tenant ('unfinished' or
-- 'finished'), and its parent ('parent'). Read without locks: the store locks all but the
-- finished ones with jobs_for_update, then checks that no locked job gained a child
-- meanwhile (its `children` against the children seen here).
WITH RECURSIVE tree (target, id, tenant) AS (
    SELECT id, id, tenant FROM jobs
    WHERE id = ANY ($1::text[]) AND ($2::text IS NULL OR tenant = $2)
    UNION
    SELECT tree.target, child.id, child.tenant
    FROM jobs AS child JOIN tree ON child.parent = tree.id AND child.tenant = tree.tenant
    WHERE child.parent <> ''  -- lets the partial index jobs_children serve the join
)
SELECT tree.target, jobs.id, jobs.parent,
    CASE
        WHEN jobs.id = tree.target THEN 'job'
        WHEN jobs.state IN (1, 2, 3) THEN 'unfinished'
        ELSE 'finished'
    END AS kind
FROM tree JOIN jobs USING (id)
UNION ALL
SELECT jobs.id, jobs.parent, '', 'parent' FROM jobs
WHERE jobs.id = ANY ($1::text[]) AND jobs.parent <> ''
    AND ($2::text IS NULL OR jobs.tenant = $2);

-- name: jobs_for_update
-- Jobs $1, locked in id order, so that transactions locking overlapping sets of jobs
-- this way cannot deadlock.
SELECT * FROM jobs WHERE id = ANY ($1::text[]) ORDER BY id FOR UPDATE;

-- name: jobs_by_id
SELECT * FROM jobs WHERE id = ANY ($1::text[]);

-- name: lease_candidates_for_update
-- Up to $2 runnable jobs at time $1: RUNNING ones whose lease expired first (they have
-- waited longest), then QUEUED ones oldest first. Rows locked by another worker are
-- skipped, so concurrent workers never get the same job.
WITH takeovers AS MATERIALIZED (
    SELECT * FROM jobs
    WHERE state = 2 AND lease_expire_time <= $1
    ORDER BY lease_expire_time
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), queued AS MATERIALIZED (
    SELECT * FROM jobs
    WHERE state = 1
    ORDER BY create_time, id
    LIMIT $2 - (SELECT count(*) FROM takeovers)
    FOR UPDATE SKIP LOCKED
)
SELECT * FROM takeovers
UNION ALL
SELECT * FROM queued;

-- name: expired
-- Up to $2 unfinished jobs past their deadline at time $1, except RUNNING ones whose
-- worker still holds a live lease (that worker times the job out itself). Read without
-- locks: the store locks each with its tree and checks it again.
SELECT id FROM jobs
WHERE state IN (1, 2, 3) AND deadline <= $1 AND (state <> 2 OR lease_expire_time <= $1)
ORDER BY deadline
LIMIT $2;

-- name: save_jobs
-- Writes the mutable columns of changed jobs (arrays $1..$15 and $19..$21, one element a
-- job) and appends their events (arrays $16..$18, in order); returns how many jobs it
-- wrote. A NULL checkpoint keeps the stored one. A job whose $21 is not NULL is written,
-- with its events, only while its stored event_seq is still $21 (read without a lock).
WITH changed AS (
    UPDATE jobs AS j SET
        state = c.state,
        result = c.result,
        failure = c.failure,
        usage = c.usage,
        checkpoint = COALESCE(c.checkpoint, j.checkpoint),
        attempt = c.attempt,
        turns = c.turns,
        lease_id = c.lease_id,
        lease_owner = c.lease_owner,
        lease_expire_time = c.lease_expire_time,
        update_time = c.update_time,
        start_time = c.start_time,
        end_time = c.end_time,
        event_seq = c.event_seq,
        children = c.children,
        awaiting = c.awaiting
    FROM unnest(
        $1::text[], $2::smallint[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[],
        $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::timestamptz[],
        $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::bigint[],
        $19::bigint[], $20::text[], $21::bigint[]
    ) AS c (
        id, state, result, failure, usage, checkpoint, attempt, turns, lease_id, lease_owner,
        lease_expire_time, start_time, end_time, update_time, event_seq, children, awaiting,
        read_seq
    )
    WHERE j.id = c.id AND (c.read_seq IS NULL OR j.event_seq = c.read_seq)
    RETURNING j.id
), appended AS (
    INSERT INTO job_events (job_id, sequence, event)
    SELECT e.job_id, e.sequence, e.event
    FROM unnest($16::text[], $17::bigint[], $18::bytea[]) WITH ORDINALITY
        AS e (job_id, sequence, event, position)
    WHERE e.job_id IN (SELECT id FROM changed)
    ORDER BY e.position
)
SELECT count(*) FROM changed;

-- name: heartbeat
UPDATE jobs SET lease_expire_time = $3
WHERE id = $1 AND lease_id = $2 AND state = 2
RETURNING lease_expire_time;

-- name: list_jobs
-- A page of tenant $1's jobs strictly before position ($2, $3) in (create_time, id)
-- order, created at or after $4, newest first; $5 states (empty: all), $6 session
-- ('': all), $7 rows.
SELECT * FROM jobs
WHERE tenant = $1
    AND (create_time, id) < ($2, $3)
    AND create_time >= $4
    AND (cardinality($5::smallint[]) = 0 OR state = ANY ($5::smallint[]))
    AND ($6 = '' OR session = $6)
ORDER BY create_time DESC, id DESC
LIMIT $7;

-- name: list_children
-- list_jobs of the children of job $8 (served by jobs_children); $9 root ('': any).
SELECT * FROM jobs
WHERE parent = $8 AND parent <> '' AND tenant = $1
    AND (create_time, id) < ($2, $3)
    AND create_time >= $4
    AND (cardinality($5::smallint[]) = 0 OR state = ANY ($5::smallint[]))
    AND ($6 = '' OR session = $6)
    AND ($9 = '' OR root = $9)
ORDER BY create_time DESC, id DESC
LIMIT $7;

-- name: list_tree
-- list_jobs of the tree of root $8 (served by jobs_tree).
SELECT * FROM jobs
WHERE root = $8 AND tenant = $1
    AND (create_time, id) < ($2, $3)
    AND create_time >= $4
    AND (cardinality($5::smallint[]) = 0 OR state = ANY ($5::smallint[]))
    AND ($6 = '' OR session = $6)
ORDER BY create_time DESC, id DESC
LIMIT $7;

-- name: list_events
-- The job's state and its events after sequence $3 (at most $4); no row for an unknown
-- job, one row with a NULL event for a known job with no such events.
SELECT jobs.state, e.event
FROM jobs
LEFT JOIN LATERAL (
    SELECT sequence, event FROM job_events
    WHERE job_id = jobs.id AND sequence > $3
    ORDER BY sequence
    LIMIT $4
) AS e ON TRUE
WHERE jobs.id = $1 AND ($2::text IS NULL OR jobs.tenant = $2)
ORDER BY e.sequence;

-- name: fetch_unpublished
SELECT row_id, event FROM job_events WHERE NOT published ORDER BY row_id LIMIT $1;

-- name: mark_published
UPDATE job_events SET published = TRUE WHERE row_id = ANY ($1::bigint[]);

-- name: try_lock_relay
-- A session-level advisory lock, per schema: whoever holds it is the only relay.
SELECT pg_try_advisory_lock(hashtextextended('agentrt.jobs.relay:' || current_schema(), 0));

-- name: insert_action
INSERT INTO actions (
    id, job_id, tenant, kind, state, payload, timeout_outcome, outcome, token_hash,
    expire_time, create_time, resolve_time, resolved_by, request_id
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14);

-- name: get_action
SELECT * FROM actions WHERE id = $1 AND job_id = $2 AND tenant = $3;

-- name: action_by_token
SELECT * FROM actions WHERE token_hash = $1 AND tenant = $2;

-- name: action_for_update
-- Taken after the action's job is locked: jobs before actions, everywhere.
SELECT * FROM actions WHERE id = $1 FOR UPDATE;

-- name: save_actions
-- Writes the mutable columns of changed actions (arrays, one element an action).
UPDATE actions AS a SET
    state = c.state,
    outcome = c.outcome,
    resolve_time = c.resolve_time,
    resolved_by = c.resolved_by,
    request_id = c.request_id
FROM unnest(
    $1::text[], $2::smallint[], $3::bytea[], $4::timestamptz[], $5::text[], $6::text[]
) AS c (id, state, outcome, resolve_time, resolved_by, request_id)
WHERE a.id = c.id;

-- name: cancel_pending_actions
-- The pending actions of jobs that were just cancelled or timed out.
UPDATE actions SET state = 4, resolve_time = $2
WHERE job_id = ANY ($1::text[]) AND state = 1;

-- name: list_actions
-- A page of job $1's actions strictly after position ($2, $3) in (create_time, id) order,
-- oldest first; $4 states (empty: all), $5 rows.
SELECT * FROM actions
WHERE job_id = $1
    AND (create_time, id) > ($2, $3)
    AND (cardinality($4::smallint[]) = 0 OR state = ANY ($4::smallint[]))
ORDER BY create_time, id
LIMIT $5;

-- name: jobs_with_expired_actions_for_update
-- Up to $2 jobs waiting on an action that expired by $1, locked (jobs before actions);
-- jobs locked by another sweeper or a resolution are skipped.
SELECT * FROM jobs
WHERE id IN (
    SELECT job_id FROM actions
    WHERE state = 1 AND expire_time <= $1
    ORDER BY expire_time
    LIMIT $2
)
ORDER BY id
FOR UPDATE SKIP LOCKED;

-- name: expired_actions_for_update
-- The pending actions of jobs $1 that expired by $2.
SELECT * FROM actions
WHERE job_id = ANY ($1::text[]) AND state = 1 AND expire_time <= $2
ORDER BY expire_time, id
FOR UPDATE;

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
