-- Policy sets. `rules` is a serialized agentrt.policy.v1.PolicySet holding only its rules.
-- Times are microseconds since the Unix epoch, UTC.
CREATE TABLE policy_sets (
    id           TEXT PRIMARY KEY,
    description  TEXT NOT NULL DEFAULT '',
    rules        BLOB NOT NULL,
    version      INTEGER NOT NULL CHECK (version >= 1),
    request_id   TEXT NOT NULL DEFAULT '',
    request_hash BLOB NOT NULL,
    create_time  INTEGER NOT NULL,
    update_time  INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX policy_sets_by_request_id ON policy_sets (request_id)
WHERE request_id <> '';
