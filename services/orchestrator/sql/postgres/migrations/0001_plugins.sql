-- Registered tool plugins. `manifest` is a serialized agentrt.orchestrator.v1.PluginManifest,
-- `tools` a serialized agentrt.orchestrator.v1.Plugin holding only its tools. `state` is a
-- Plugin.State number.
CREATE TABLE plugins (
    id               TEXT PRIMARY KEY,
    manifest         BYTEA NOT NULL,
    tools            BYTEA NOT NULL,
    state            INTEGER NOT NULL,
    last_check_time  TIMESTAMPTZ NOT NULL,
    last_check_error TEXT NOT NULL DEFAULT '',
    request_id       TEXT NOT NULL DEFAULT '',
    request_hash     BYTEA NOT NULL,
    create_time      TIMESTAMPTZ NOT NULL
);

CREATE UNIQUE INDEX plugins_by_request_id ON plugins (request_id)
WHERE request_id <> '';
