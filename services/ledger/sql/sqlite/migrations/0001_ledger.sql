-- Usage records, prices, budgets with their per-window counters, and reservations.
-- Times are microseconds since the Unix epoch, UTC.
-- Money is kept as whole nano-dollars (INTEGER, 1e-9 USD), never as a float.

CREATE TABLE usage_records (
    id                  TEXT PRIMARY KEY,              -- chosen by the caller: idempotency
    body_hash           BLOB NOT NULL,                -- of the record as sent
    tenant              TEXT NOT NULL,
    principal           TEXT NOT NULL,
    kind                INTEGER NOT NULL,             -- agentrt.ledger.v1.UsageKind
    model               TEXT NOT NULL,
    tool                TEXT NOT NULL,
    job                 TEXT NOT NULL,
    parent_job          TEXT NOT NULL,
    root_job            TEXT NOT NULL,                 -- '' for a top-level job
    trace_id            TEXT NOT NULL,
    input_tokens        INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    cost_nanos          INTEGER,                        -- NULL when no price was known
    usage_time          INTEGER NOT NULL,
    create_time         INTEGER NOT NULL
);

-- Budget counters and reports: a tenant's usage over a time range.
CREATE INDEX usage_records_tenant_time ON usage_records (tenant, usage_time);

CREATE TABLE prices (
    model              TEXT PRIMARY KEY,
    input_price        TEXT NOT NULL,                  -- decimal strings, per million tokens
    output_price       TEXT NOT NULL,
    cached_input_price TEXT NOT NULL,
    etag               TEXT NOT NULL,
    create_time        INTEGER NOT NULL,
    update_time        INTEGER NOT NULL
);

CREATE TABLE budgets (
    id               TEXT PRIMARY KEY,
    description      TEXT NOT NULL,
    tenant           TEXT NOT NULL,
    principal        TEXT NOT NULL,                    -- '' for the whole tenant
    period           INTEGER NOT NULL,                -- agentrt.ledger.v1.Budget.Period
    limit_tokens     INTEGER,                           -- NULL: no limit
    limit_cost_nanos INTEGER,
    limit_tool_calls INTEGER,
    warn_threshold   REAL,
    etag             TEXT NOT NULL,
    create_time      INTEGER NOT NULL,
    update_time      INTEGER NOT NULL
);

CREATE INDEX budgets_tenant ON budgets (tenant, principal);

-- What a budget's window has spent (recorded usage) and holds (active reservations).
-- A row is made on first use, starting from the usage already recorded in its window.
CREATE TABLE budget_counters (
    budget_id           TEXT NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    period              INTEGER NOT NULL,
    window_start        INTEGER NOT NULL,
    spent_tokens        INTEGER NOT NULL,
    spent_cost_nanos    INTEGER NOT NULL,
    spent_tool_calls    INTEGER NOT NULL,
    reserved_tokens     INTEGER NOT NULL DEFAULT 0,
    reserved_cost_nanos INTEGER NOT NULL DEFAULT 0,
    reserved_tool_calls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (budget_id, period, window_start),
    CHECK (reserved_tokens >= 0 AND reserved_cost_nanos >= 0 AND reserved_tool_calls >= 0)
);

CREATE TABLE reservations (
    id                 TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    principal          TEXT NOT NULL,
    job                TEXT NOT NULL,
    request_id         TEXT NOT NULL,
    request_hash       BLOB NOT NULL,
    tokens             INTEGER NOT NULL,
    cost_nanos         INTEGER NOT NULL,
    tool_calls         INTEGER NOT NULL,
    state              INTEGER NOT NULL,              -- agentrt.ledger.v1.Reservation.State
    verdict            INTEGER NOT NULL,
    budgets            TEXT NOT NULL,                  -- JSON list of budget ids
    settled_tokens     INTEGER,
    settled_cost_nanos INTEGER,
    settled_tool_calls INTEGER,
    settled_records    TEXT,                           -- JSON sorted list of record ids
    expire_time        INTEGER NOT NULL,
    create_time        INTEGER NOT NULL,
    end_time           INTEGER
);

CREATE UNIQUE INDEX reservations_request_id ON reservations (tenant, request_id)
    WHERE request_id <> '';

-- The sweeper: ACTIVE reservations by expiry.
CREATE INDEX reservations_expiry ON reservations (expire_time) WHERE state = 1;

-- The counters an ACTIVE reservation holds amounts on.
CREATE TABLE reservation_holds (
    reservation_id TEXT NOT NULL REFERENCES reservations (id) ON DELETE CASCADE,
    budget_id      TEXT NOT NULL,
    period         INTEGER NOT NULL,
    window_start   INTEGER NOT NULL,
    PRIMARY KEY (reservation_id, budget_id),
    FOREIGN KEY (budget_id, period, window_start)
        REFERENCES budget_counters (budget_id, period, window_start) ON DELETE CASCADE
);

CREATE INDEX reservation_holds_counter ON reservation_holds (budget_id, period, window_start);
