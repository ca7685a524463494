-- Queries of the PostgreSQL ledger store ($n parameters, asyncpg).
-- Counter rows are always locked in (budget_id, period, window_start) order, after every
-- counter a transaction needs exists, and after the reservation rows it changes: that one
-- order for every writer is what keeps concurrent reserves, settles and sweeps free of
-- deadlocks.

-- name: insert_usage
-- Returns no row when the id exists (ON CONFLICT waits for a concurrent insert to end).
INSERT INTO usage_records (
    id, body_hash, tenant, principal, kind, model, tool, job, parent_job, root_job,
    trace_id, input_tokens, output_tokens, cached_input_tokens, cache_write_input_tokens,
    cost_nanos, usage_time, create_time
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
ON CONFLICT (id) DO NOTHING
RETURNING *;

-- name: usage_by_id
SELECT * FROM usage_records WHERE id = $1;

-- name: list_usage
SELECT * FROM usage_records WHERE $1 = '' OR tenant = $1 ORDER BY usage_time DESC, id DESC;

-- name: applicable_budgets
-- The budgets of tenant $1 that apply to principal $2 in the job tree of root $3: the
-- tenant's own and the principal's, and the tree's ($3 '' for a job of no tree).
SELECT id, period FROM budgets
WHERE tenant = $1 AND (principal = '' OR principal = $2) AND (root_job = '' OR root_job = $3)
ORDER BY id;

-- name: ensure_counter
-- Makes budget $1's counter of the window [$3, $4) of period $2 unless it exists, from the
-- usage already recorded in that window except records $5 (inserted by this transaction,
-- which adds them itself). Makes nothing when the budget's period is no longer $2.
INSERT INTO budget_counters (
    budget_id, period, window_start, spent_tokens, spent_cost_nanos, spent_tool_calls
)
SELECT b.id, b.period, $3,
       coalesce(sum(u.input_tokens + u.output_tokens), 0),
       coalesce(sum(u.cost_nanos), 0),
       count(*) FILTER (WHERE u.kind = 2)
FROM budgets b
LEFT JOIN usage_records u
    ON u.tenant = b.tenant
    AND (b.principal = '' OR u.principal = b.principal)
    AND (b.root_job = '' OR u.root_job = b.root_job)
    AND u.usage_time >= $3 AND u.usage_time < $4
    AND u.id <> ALL ($5::text[])
WHERE b.id = $1 AND b.period = $2
GROUP BY b.id, b.period
ON CONFLICT DO NOTHING;

-- name: lock_counters
-- The counters ($1, $2, $3 zipped) with their budget's limits, locked in key order.
SELECT c.*, b.limit_tokens, b.limit_cost_nanos, b.limit_tool_calls, b.warn_threshold
FROM budget_counters c
JOIN budgets b ON b.id = c.budget_id
WHERE (c.budget_id, c.period, c.window_start) IN (
    SELECT * FROM unnest($1::text[], $2::smallint[], $3::timestamptz[])
)
ORDER BY c.budget_id, c.period, c.window_start
FOR UPDATE OF c;

-- name: read_counters
-- As lock_counters, without locking: for CheckBudget.
SELECT c.*, b.limit_tokens, b.limit_cost_nanos, b.limit_tool_calls, b.warn_threshold
FROM budget_counters c
JOIN budgets b ON b.id = c.budget_id
WHERE (c.budget_id, c.period, c.window_start) IN (
    SELECT * FROM unnest($1::text[], $2::smallint[], $3::timestamptz[])
)
ORDER BY c.budget_id;

-- name: add_to_counter
-- Adds to one (already locked) counter: spent $4..$6, reserved $7..$9 (negative to give
-- back).
UPDATE budget_counters
SET spent_tokens = spent_tokens + $4,
    spent_cost_nanos = spent_cost_nanos + $5,
    spent_tool_calls = spent_tool_calls + $6,
    reserved_tokens = reserved_tokens + $7,
    reserved_cost_nanos = reserved_cost_nanos + $8,
    reserved_tool_calls = reserved_tool_calls + $9
WHERE budget_id = $1 AND period = $2 AND window_start = $3;

-- name: price_of
SELECT * FROM prices WHERE model = $1;

-- name: insert_price
INSERT INTO prices (
    model, input_price, output_price, cached_input_price, cache_write_price, etag,
    create_time, update_time
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
ON CONFLICT (model) DO NOTHING
RETURNING *;

-- name: list_prices
SELECT * FROM prices ORDER BY model;

-- name: price_for_update
SELECT * FROM prices WHERE model = $1 FOR UPDATE;

-- name: update_price
UPDATE prices
SET input_price = $2, output_price = $3, cached_input_price = $4, cache_write_price = $5,
    etag = $6, update_time = $7
WHERE model = $1
RETURNING *;

-- name: delete_price
DELETE FROM prices WHERE model = $1;

-- name: lock_usage_for_budget_change
-- Waits for every transaction that is inserting usage records, and holds new ones back,
-- while a budget is created or changes period: a recording transaction then either
-- finishes first (and its usage is summed when the counter is made) or sees the budget.
LOCK TABLE usage_records IN SHARE MODE;

-- name: insert_budget
INSERT INTO budgets (
    id, description, tenant, principal, period, limit_tokens, limit_cost_nanos,
    limit_tool_calls, warn_threshold, etag, create_time, update_time, root_job
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12)
ON CONFLICT (id) DO NOTHING
RETURNING *;

-- name: budget_by_id
SELECT * FROM budgets WHERE id = $1;

-- name: budget_for_update
SELECT * FROM budgets WHERE id = $1 FOR UPDATE;

-- name: list_budgets
SELECT * FROM budgets WHERE $1 = '' OR tenant = $1 ORDER BY id;

-- name: update_budget
UPDATE budgets
SET description = $2, period = $3, limit_tokens = $4, limit_cost_nanos = $5,
    limit_tool_calls = $6, warn_threshold = $7, etag = $8, update_time = $9
WHERE id = $1
RETURNING *;

-- name: delete_budget
DELETE FROM budgets WHERE id = $1;

-- name: reservation_by_request_id
SELECT * FROM reservations WHERE tenant = $1 AND request_id = $2 AND request_id <> '';

-- name: reservation_for_update
SELECT * FROM reservations WHERE id = $1 FOR UPDATE;

-- name: expired_for_update
-- ACTIVE reservations past their expiry; ones another sweeper or settle holds are skipped.
SELECT * FROM reservations
WHERE state = 1 AND expire_time <= $1
ORDER BY id
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: holds_of
-- The counters reservations $1 hold amounts on (a deleted budget's holds are gone).
SELECT reservation_id, budget_id, period, window_start FROM reservation_holds
WHERE reservation_id = ANY ($1::text[]);

-- name: end_reservation
-- Moves reservation $1 to state $2 at $3, with what was settled ($4..$7, or NULL).
UPDATE reservations
SET state = $2, end_time = $3, settled_tokens = $4, settled_cost_nanos = $5,
    settled_tool_calls = $6, settled_records = $7
WHERE id = $1
RETURNING *;

-- name: delete_holds
DELETE FROM reservation_holds WHERE reservation_id = ANY ($1::text[]);

-- name: insert_create_request
-- Remembers that request $2 of kind $1 created $3; a request_id made by a concurrent
-- create of the same resource is left as it is.
INSERT INTO create_requests (kind, request_id, resource, request_hash, create_time)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (kind, request_id) DO NOTHING;

-- name: create_request_by_id
SELECT resource, request_hash FROM create_requests WHERE kind = $1 AND request_id = $2;

-- name: reserve
-- The whole reservation in one statement, so that no round trip separates the decision
-- from the write: it locks the current-window counters of every budget of tenant $2 that
-- applies to principal $3 and root job $12 (in key order, waiting for concurrent writers and then seeing
-- their committed values), decides on those locked values whether amounts $7..$9 fit
-- under every limit, and only if they all fit inserts reservation $1 (request_id $5,
-- request_hash $6, expiring at $10, made at $11), its holds, and adds the amounts to the
-- counters. Nothing is written when a counter is missing (the caller makes it and asks
-- again), when one does not fit, or when request_id $5 was used before by the tenant.
-- One row per locked counter (as it was before this reservation), or one row of NULL
-- counter columns when none is; every row carries the decision
-- (as all_fit: the counter columns have a `fits` of their own).
WITH applicable AS (
    SELECT b.id, b.period,
           CASE b.period
               WHEN 1 THEN date_trunc('day', $11::timestamptz, 'UTC')
               WHEN 2 THEN date_trunc('month', $11::timestamptz, 'UTC')
               ELSE '1970-01-01 00:00:00+00'::timestamptz
           END AS window_start,
           b.limit_tokens, b.limit_cost_nanos, b.limit_tool_calls, b.warn_threshold
    FROM budgets b
    WHERE b.tenant = $2 AND (b.principal = '' OR b.principal = $3)
        AND (b.root_job = '' OR b.root_job = $12)
),
locked AS (
    SELECT c.*
    FROM budget_counters c
    WHERE (c.budget_id, c.period, c.window_start) IN (
        SELECT id, period, window_start FROM applicable
    )
    ORDER BY c.budget_id, c.period, c.window_start
    FOR UPDATE
),
counters AS (
    SELECT l.*, a.limit_tokens, a.limit_cost_nanos, a.limit_tool_calls, a.warn_threshold,
           (a.limit_tokens IS NULL
               OR l.spent_tokens + l.reserved_tokens + $7 <= a.limit_tokens)
           AND (a.limit_cost_nanos IS NULL
               OR l.spent_cost_nanos + l.reserved_cost_nanos + $8 <= a.limit_cost_nanos)
           AND (a.limit_tool_calls IS NULL
               OR l.spent_tool_calls + l.reserved_tool_calls + $9 <= a.limit_tool_calls)
           AS fits,
           a.warn_threshold IS NOT NULL AND (
               (a.limit_tokens IS NOT NULL AND l.spent_tokens + l.reserved_tokens + $7
                   >= a.warn_threshold * a.limit_tokens)
               OR (a.limit_cost_nanos IS NOT NULL AND l.spent_cost_nanos
                   + l.reserved_cost_nanos + $8 >= a.warn_threshold * a.limit_cost_nanos)
               OR (a.limit_tool_calls IS NOT NULL AND l.spent_tool_calls
                   + l.reserved_tool_calls + $9 >= a.warn_threshold * a.limit_tool_calls)
           ) AS warns
    FROM locked l
    JOIN applicable a
        ON a.id = l.budget_id AND a.period = l.period AND a.window_start = l.window_start
),
decision AS (
    SELECT (SELECT count(*) FROM applicable) AS wanted,
           (SELECT count(*) FROM counters) AS found,
           coalesce((SELECT bool_and(fits) FROM counters), true) AS fits,
           coalesce((SELECT bool_or(warns) FROM counters), false) AS warns,
           EXISTS (
               SELECT 1 FROM reservations WHERE $5 <> '' AND tenant = $2 AND request_id = $5 AND request_id <> ''
           ) AS repeated
),
inserted AS (
    INSERT INTO reservations (
        id, tenant, principal, job, request_id, request_hash, tokens, cost_nanos, tool_calls,
        state, verdict, budgets, expire_time, create_time
    )
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, 1,
           CASE WHEN d.warns THEN 2 ELSE 1 END,
           (SELECT coalesce(json_agg(id ORDER BY id), '[]')::text FROM applicable),
           $10, $11
    FROM decision d
    WHERE d.wanted = d.found AND d.fits AND NOT d.repeated
    ON CONFLICT (tenant, request_id) WHERE request_id <> '' DO NOTHING
    RETURNING *
),
holds AS (
    INSERT INTO reservation_holds (reservation_id, budget_id, period, window_start)
    SELECT i.id, c.budget_id, c.period, c.window_start
    FROM inserted i CROSS JOIN counters c
),
added AS (
    UPDATE budget_counters bc
    SET reserved_tokens = bc.reserved_tokens + $7,
        reserved_cost_nanos = bc.reserved_cost_nanos + $8,
        reserved_tool_calls = bc.reserved_tool_calls + $9
    FROM counters c, inserted i
    WHERE bc.budget_id = c.budget_id AND bc.period = c.period
        AND bc.window_start = c.window_start
)
SELECT d.wanted, d.found, d.fits AS all_fit, d.repeated,
       (SELECT count(*) FROM inserted) AS made,
       (SELECT verdict FROM inserted) AS made_verdict,
       (SELECT budgets FROM inserted) AS made_budgets,
       c.*
FROM decision d
LEFT JOIN counters c ON true
ORDER BY c.budget_id, c.period, c.window_start;

-- name: reservation_for_settle
-- Reservation $1, locked, with the prices of models $2 (a JSON list of [model, input,
-- output, cached input, cache write]): what a settle needs before it records the usage, in one round
-- trip.
SELECT r.*,
       (SELECT coalesce(json_agg(json_build_array(
                   p.model, p.input_price, p.output_price, p.cached_input_price,
                   p.cache_write_price)), '[]')
        FROM prices p WHERE p.model = ANY ($2::text[]))::text AS model_prices
FROM reservations r
WHERE r.id = $1
FOR UPDATE OF r;

-- name: finish_reservation
-- The end of settling or releasing reservation $1 (locked by this transaction) in one
-- statement, so that a settle is one round trip after its usage records are inserted and
-- a release one after the lock: adds records $2 (inserted by this transaction) to the spent
-- counters of the budgets that apply to each, in the window of its usage_time; gives back
-- what the reservation holds if it is ACTIVE; drops its holds and moves it to state $3 at
-- $4 with what was settled ($5..$8, NULL for a release). It locks the counters in key
-- order only when every one exists: when one is missing it locks and writes nothing
-- (`complete` is false) and names the missing ones (three arrays in one order) for the
-- caller to make before it asks again. Running after the records' insert, it sees every
-- budget whose creation did not wait for this transaction (lock_usage_for_budget_change).
WITH spent AS (
    SELECT b.id AS budget_id, b.period,
           CASE b.period
               WHEN 1 THEN date_trunc('day', u.usage_time, 'UTC')
               WHEN 2 THEN date_trunc('month', u.usage_time, 'UTC')
               ELSE '1970-01-01 00:00:00+00'::timestamptz
           END AS window_start,
           u.input_tokens + u.output_tokens AS tokens,
           coalesce(u.cost_nanos, 0) AS cost_nanos,
           CASE WHEN u.kind = 2 THEN 1 ELSE 0 END AS tool_calls
    FROM usage_records u
    JOIN budgets b
        ON b.tenant = u.tenant AND (b.principal = '' OR b.principal = u.principal)
        AND (b.root_job = '' OR b.root_job = u.root_job)
    WHERE u.id = ANY ($2::text[])
),
held AS (
    SELECT h.budget_id, h.period, h.window_start, r.tokens, r.cost_nanos, r.tool_calls
    FROM reservations r
    JOIN reservation_holds h ON h.reservation_id = r.id
    WHERE r.id = $1 AND r.state = 1
),
deltas AS (
    SELECT budget_id, period, window_start,
           sum(spent_tokens) AS spent_tokens,
           sum(spent_cost_nanos) AS spent_cost_nanos,
           sum(spent_tool_calls) AS spent_tool_calls,
           sum(reserved_tokens) AS reserved_tokens,
           sum(reserved_cost_nanos) AS reserved_cost_nanos,
           sum(reserved_tool_calls) AS reserved_tool_calls
    FROM (
        SELECT budget_id, period, window_start,
               tokens AS spent_tokens, cost_nanos AS spent_cost_nanos,
               tool_calls AS spent_tool_calls,
               0 AS reserved_tokens, 0 AS reserved_cost_nanos, 0 AS reserved_tool_calls
        FROM spent
        UNION ALL
        SELECT budget_id, period, window_start, 0, 0, 0, -tokens, -cost_nanos, -tool_calls
        FROM held
    ) AS both_kinds
    GROUP BY budget_id, period, window_start
),
missing AS (
    SELECT d.budget_id, d.period, d.window_start
    FROM deltas d
    WHERE NOT EXISTS (
        SELECT 1 FROM budget_counters c
        WHERE c.budget_id = d.budget_id AND c.period = d.period
            AND c.window_start = d.window_start
    )
),
locked AS (
    SELECT c.budget_id
    FROM budget_counters c
    WHERE (c.budget_id, c.period, c.window_start) IN (
        SELECT budget_id, period, window_start FROM deltas
    )
        AND NOT EXISTS (SELECT 1 FROM missing)
    ORDER BY c.budget_id, c.period, c.window_start
    FOR UPDATE
),
decision AS (
    -- Fewer locked than wanted without a missing one: a budget went meanwhile; ask again.
    SELECT (SELECT count(*) FROM locked) = (SELECT count(*) FROM deltas) AS complete
),
added AS (
    UPDATE budget_counters c
    SET spent_tokens = c.spent_tokens + d.spent_tokens,
        spent_cost_nanos = c.spent_cost_nanos + d.spent_cost_nanos,
        spent_tool_calls = c.spent_tool_calls + d.spent_tool_calls,
        reserved_tokens = c.reserved_tokens + d.reserved_tokens,
        reserved_cost_nanos = c.reserved_cost_nanos + d.reserved_cost_nanos,
        reserved_tool_calls = c.reserved_tool_calls + d.reserved_tool_calls
    FROM deltas d, decision
    WHERE decision.complete AND c.budget_id = d.budget_id AND c.period = d.period
        AND c.window_start = d.window_start
),
dropped AS (
    DELETE FROM reservation_holds
    WHERE reservation_id = $1 AND (SELECT complete FROM decision)
),
ended AS (
    UPDATE reservations
    SET state = $3, end_time = $4, settled_tokens = $5, settled_cost_nanos = $6,
        settled_tool_calls = $7, settled_records = $8
    WHERE id = $1 AND (SELECT complete FROM decision)
    RETURNING *
)
SELECT (SELECT complete FROM decision) AS complete,
       ARRAY(SELECT budget_id FROM missing ORDER BY budget_id, period, window_start)
           AS missing_budgets,
       ARRAY(SELECT period FROM missing ORDER BY budget_id, period, window_start)
           AS missing_periods,
       ARRAY(SELECT window_start FROM missing ORDER BY budget_id, period, window_start)
           AS missing_windows,
       e.*
FROM decision
LEFT JOIN ended e ON true;
