-- The request_id of each CreatePrice and CreateBudget, written in the transaction that
-- creates the resource: a retried create finds what it made, a reused id with another
-- body is refused.
CREATE TABLE create_requests (
    kind         TEXT NOT NULL,                     -- 'price' or 'budget'
    request_id   TEXT NOT NULL,
    resource     TEXT NOT NULL,                     -- the model or budget id it created
    request_hash BYTEA NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, request_id)
);
