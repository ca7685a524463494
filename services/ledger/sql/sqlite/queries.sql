-- Queries of the SQLite ledger store (:name parameters; times in microseconds, UTC).
-- Every write runs inside BEGIN IMMEDIATE, which holds the database's write lock from the
-- start, so reading counters, deciding and writing them back is atomic.

-- name: insert_usage
-- Returns no row when the id exists.
INSERT INTO usage_records (
    id, body_hash, tenant, principal, kind, model, tool, job, parent_job, root_job,
    trace_id, input_tokens, output_tokens, cached_input_tokens, cache_write_input_tokens,
    cost_nanos, usage_time, create_time
)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING
RETURNING *;

-- name: usage_by_id
SELECT * FROM usage_records WHERE id = ?;

-- name: list_usage
SELECT * FROM usage_records WHERE ?1 = '' OR tenant = ?1 ORDER BY usage_time DESC, id DESC;

-- name: applicable_budgets
-- The budgets of tenant ?1 that apply to principal ?2 in the job tree of root ?3: the
-- tenant's own and the principal's, and the tree's (?3 '' for a job of no tree).
SELECT id, period FROM budgets
WHERE tenant = ?1 AND (principal = '' OR principal = ?2) AND (root_job = '' OR root_job = ?3)
ORDER BY id;

-- name: ensure_counter
-- Makes budget ?1's counter of the window [?3, ?4) of period ?2 unless it exists, from the
-- usage already recorded in that window except the records of JSON list ?5 (inserted by
-- this transaction, which adds them itself).
INSERT INTO budget_counters (
    budget_id, period, window_start, spent_tokens, spent_cost_nanos, spent_tool_calls
)
SELECT b.id, b.period, ?3,
       coalesce(sum(u.input_tokens + u.output_tokens), 0),
       coalesce(sum(u.cost_nanos), 0),
       count(*) FILTER (WHERE u.kind = 2)
FROM budgets b
LEFT JOIN usage_records u
    ON u.tenant = b.tenant
    AND (b.principal = '' OR u.principal = b.principal)
    AND (b.root_job = '' OR u.root_job = b.root_job)
    AND u.usage_time >= ?3 AND u.usage_time < ?4
    AND u.id NOT IN (SELECT value FROM json_each(?5))
WHERE b.id = ?1 AND b.period = ?2
GROUP BY b.id, b.period
ON CONFLICT DO NOTHING;

-- name: read_counter
SELECT c.*, b.limit_tokens, b.limit_cost_nanos, b.limit_tool_calls, b.warn_threshold
FROM budget_counters c
JOIN budgets b ON b.id = c.budget_id
WHERE c.budget_id = ? AND c.period = ? AND c.window_start = ?;

-- name: add_to_counter
UPDATE budget_counters
SET spent_tokens = spent_tokens + ?4,
    spent_cost_nanos = spent_cost_nanos + ?5,
    spent_tool_calls = spent_tool_calls + ?6,
    reserved_tokens = reserved_tokens + ?7,
    reserved_cost_nanos = reserved_cost_nanos + ?8,
    reserved_tool_calls = reserved_tool_calls + ?9
WHERE budget_id = ?1 AND period = ?2 AND window_start = ?3;

-- name: price_of
SELECT * FROM prices WHERE model = ?;

-- name: insert_price
INSERT INTO prices (
    model, input_price, output_price, cached_input_price, cache_write_price, etag,
    create_time, update_time
)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
ON CONFLICT (model) DO NOTHING
RETURNING *;

-- name: list_prices
SELECT * FROM prices ORDER BY model;

-- name: update_price
UPDATE prices
SET input_price = ?2, output_price = ?3, cached_input_price = ?4, cache_write_price = ?5,
    etag = ?6, update_time = ?7
WHERE model = ?1
RETURNING *;

-- name: delete_price
DELETE FROM prices WHERE model = ?;

-- name: insert_budget
INSERT INTO budgets (
    id, description, tenant, principal, period, limit_tokens, limit_cost_nanos,
    limit_tool_calls, warn_threshold, etag, create_time, update_time, root_job
)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12)
ON CONFLICT (id) DO NOTHING
RETURNING *;

-- name: budget_by_id
SELECT * FROM budgets WHERE id = ?;

-- name: list_budgets
SELECT * FROM budgets WHERE ?1 = '' OR tenant = ?1 ORDER BY id;

-- name: update_budget
UPDATE budgets
SET description = ?2, period = ?3, limit_tokens = ?4, limit_cost_nanos = ?5,
    limit_tool_calls = ?6, warn_threshold = ?7, etag = ?8, update_time = ?9
WHERE id = ?1
RETURNING *;

-- name: delete_budget
DELETE FROM budgets WHERE id = ?;

-- name: insert_reservation
-- Returns no row when the tenant has a reservation with this request_id.
INSERT INTO reservations (
    id, tenant, principal, job, request_id, request_hash, tokens, cost_nanos, tool_calls,
    state, verdict, budgets, expire_time, create_time
)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10, ?11, ?12, ?13)
ON CONFLICT (tenant, request_id) WHERE request_id <> '' DO NOTHING
RETURNING *;

-- name: insert_hold
INSERT INTO reservation_holds (reservation_id, budget_id, period, window_start)
VALUES (?, ?, ?, ?);

-- name: reservation_by_request_id
SELECT * FROM reservations WHERE tenant = ? AND request_id = ? AND request_id <> '';

-- name: reservation_by_id
SELECT * FROM reservations WHERE id = ?;

-- name: expired
SELECT * FROM reservations
WHERE state = 1 AND expire_time <= ?
ORDER BY id
LIMIT ?;

-- name: holds_of
SELECT reservation_id, budget_id, period, window_start FROM reservation_holds
WHERE reservation_id IN (SELECT value FROM json_each(?));

-- name: end_reservation
UPDATE reservations
SET state = ?2, end_time = ?3, settled_tokens = ?4, settled_cost_nanos = ?5,
    settled_tool_calls = ?6, settled_records = ?7
WHERE id = ?1
RETURNING *;

-- name: delete_holds
DELETE FROM reservation_holds WHERE reservation_id IN (SELECT value FROM json_each(?));

-- name: insert_create_request
-- Remembers that request ?2 of kind ?1 created ?3.
INSERT INTO create_requests (kind, request_id, resource, request_hash, create_time)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (kind, request_id) DO NOTHING;

-- name: create_request_by_id
SELECT resource, request_hash FROM create_requests WHERE kind = ?1 AND request_id = ?2;
