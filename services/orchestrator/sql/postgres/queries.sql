-- name: insert_plugin
-- Inserts nothing when the id or the request_id is taken.
INSERT INTO plugins
    (id, manifest, tools, state, last_check_time, last_check_error, request_id, request_hash,
     create_time)
VALUES ($1, $2, $3, $4, $7, '', $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING id, manifest, tools, state, last_check_time, last_check_error, create_time;

-- name: plugin_by_request_id
SELECT id, manifest, tools, state, last_check_time, last_check_error, create_time,
       request_hash
FROM plugins
WHERE request_id = $1 AND request_id <> '';

-- name: get_plugin
SELECT id, manifest, tools, state, last_check_time, last_check_error, create_time
FROM plugins
WHERE id = $1;

-- name: list_plugins
SELECT id, manifest, tools, state, last_check_time, last_check_error, create_time
FROM plugins
-- Byte order, as on SQLite, whatever the database's collation.
ORDER BY id COLLATE "C";

-- name: delete_plugin
DELETE FROM plugins
WHERE id = $1;

-- name: record_check
-- Only on the incarnation that was checked: a plugin deleted and registered again since
-- keeps the result of its own checks.
UPDATE plugins
SET state = $3,
    last_check_time = $4,
    last_check_error = $5,
    tools = CASE WHEN $6 THEN $7::bytea ELSE tools END
WHERE id = $1 AND create_time = $2;
