-- Registered tool plugins. `manifest` is a serialized agentrt.orchestrator.v1.PluginManifest,
-- `tools` a serialized agentrt.orchestrator.v1.Plugin holding only its tools. `state` is a
-- Plugin.State number. Times are microseconds since the Unix epoch, UTC.
CREATE TABLE plugins (
    id               TEXT PRIMARY KEY,
    manifest         BLOB NOT NULL,
    tools            BLOB NOT NULL,
    state            INTEGER NOT NULL,
    last_check_time  INTEGER NOT NULL,
    last_check_error TEXT NOT NULL DEFAULT '',
    request_id       TEXT NOT NULL DEFAULT '',
    request_hash     BLOB NOT NULL,
    create_time      INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX plugins_by_request_id ON plugins (request_id)
WHERE request_id <> '';
