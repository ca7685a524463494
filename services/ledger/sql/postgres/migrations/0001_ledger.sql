-- Usage records, prices, budgets with their per-window counters, and reservations.
-- Money is kept as whole nano-dollars (BIGINT, 1e-9 USD), never as a float.

CREATE TABLE usage_records (
    id                  TEXT PRIMARY KEY,              -- chosen by the caller: idempotency
    body_hash           BYTEA NOT NULL,                -- of the record as sent
    tenant              TEXT NOT NULL,
    principal           TEXT NOT NULL,
    kind                SMALLINT NOT NULL,             -- agentrt.ledger.v1.UsageKind
    model               TEXT NOT NULL,
    tool                TEXT NOT NULL,
    job                 TEXT NOT NULL,
    parent_job          TEXT NOT NULL,
    root_job            TEXT NOT NULL,                 -- '' for a top-level job
    trace_id            TEXT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    cost_nanos          BIGINT,                        -- NULL when no price was known
    usage_time          TIMESTAMPTZ NOT NULL,
    create_time         TIMESTAMPTZ NOT NULL
);

-- Budget counters and reports: a tenant's usage over a time range.
CREATE INDEX usage_records_tenant_time ON usage_records (tenant, usage_time);

CREATE TABLE prices (
    model              TEXT PRIMARY KEY,
    input_price        TEXT NOT NULL,                  -- decimal strings, per million tokens
    output_price       TEXT NOT NULL,
    cached_input_price TEXT NOT NULL,
    etag               TEXT NOT NULL,
    create_time        TIMESTAMPTZ NOT NULL,
    update_time        TIMESTAMPTZ NOT NULL
);

CREATE TABLE budgets (
    id               TEXT PRIMARY KEY,
    description      TEXT NOT NULL,
    tenant           TEXT NOT NULL,
    principal        TEXT NOT NULL,                    -- '' for the whole tenant
    period           SMALLINT NOT NULL,                -- agentrt.ledger.v1.Budget.Period
    limit_tokens     BIGINT,                           -- NULL: no limit
    limit_cost_nanos BIGINT,
    limit_tool_calls BIGINT,
    warn_threshold   DOUBLE PRECISION,
    etag             TEXT NOT NULL,
    create_time      TIMESTAMPTZ NOT NULL,
    update_time      TIMESTAMPTZ NOT NULL
);

CREATE INDEX budgets_tenant ON budgets (tenant, principal);

-- What a budget's window has spent (recorded usage) and holds (active reservations).
-- A row is made on first use, starting from the usage already recorded in its window.
CREATE TABLE budget_counters (
    budget_id           TEXT NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    period              SMALLINT NOT NULL,
    window_start        TIMESTAMPTZ NOT NULL,
    spent_tokens        BIGINT NOT NULL,
    spent_cost_nanos    BIGINT NOT NULL,
    spent_tool_calls    BIGINT NOT NULL,
    reserved_tokens     BIGINT NOT NULL DEFAULT 0,
    reserved_cost_nanos BIGINT NOT NULL DEFAULT 0,
    reserved_tool_calls BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (budget_id, period, window_start),
    CHECK (reserved_tokens >= 0 AND reserved_cost_nanos >= 0 AND reserved_tool_calls >= 0)
);

CREATE TABLE reservations (
    id                 TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    principal          TEXT NOT NULL,
    job                TEXT NOT NULL,
    request_id         TEXT NOT NULL,
    request_hash       BYTEA NOT NULL,
    tokens             BIGINT NOT NULL,
    cost_nanos         BIGINT NOT NULL,
    tool_calls         BIGINT NOT NULL,
    state              SMALLINT NOT NULL,              -- agentrt.ledger.v1.Reservation.State
    verdict            SMALLINT NOT NULL,
    budgets            TEXT NOT NULL,                  -- JSON list of budget ids
    settled_tokens     BIGINT,
    settled_cost_nanos BIGINT,
    settled_tool_calls BIGINT,
    settled_records    TEXT,                           -- JSON sorted list of record ids
    expire_time        TIMESTAMPTZ NOT NULL,
    create_time        TIMESTAMPTZ NOT NULL,
    end_time           TIMESTAMPTZ
);

CREATE UNIQUE INDEX reservations_request_id ON reservations (tenant, request_id)
    WHERE request_id <> '';

-- The sweeper: ACTIVE reservations by expiry.
CREATE INDEX reservations_expiry ON reservations (expire_time) WHERE state = 1;

-- The counters an ACTIVE reservation holds amounts on.
CREATE TABLE reservation_holds (
    reservation_id TEXT NOT NULL REFERENCES reservations (id) ON DELETE CASCADE,
    budget_id      TEXT NOT NULL,
    period         SMALLINT NOT NULL,
    window_start   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (reservation_id, budget_id),
    FOREIGN KEY (budget_id, period, window_start)
        REFERENCES budget_counters (budget_id, period, window_start) ON DELETE CASCADE
);

CREATE INDEX reservation_holds_counter ON reservation_holds (budget_id, period, window_start);
