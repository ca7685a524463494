-- name: insert_plugin
-- Inserts nothing when the id or the request_id is taken.
INSERT INTO plugins
    (id, manifest, tools, state, last_check_time, last_check_error, request_id, request_hash,
     create_time)
VALUES (:id, :manifest, :tools, :state, :now, '', :request_id, :request_hash, :now)
ON CONFLICT DO NOTHING
RETURNING id, manifest, tools, state, last_check_time, last_check_error, create_time;

-- name: plugin_by_request_id
SELECT id, manifest, tools, state, last_check_time, last_check_error, create_time,
       request_hash
FROM plugins
WHERE request_id = :request_id AND request_id <> '';

-- name: get_plugin
SELECT id, manifest, tools, state, last_check_time, last_check_error, create_time
FROM plugins
WHERE id = :id;

-- name: list_plugins
SELECT id, manifest, tools, state, last_check_time, last_check_error, create_time
FROM plugins
ORDER BY id;

-- name: delete_plugin
DELETE FROM plugins
WHERE id = :id;

-- name: record_check
-- Only on the incarnation that was checked: a plugin deleted and registered again since
-- keeps the result of its own checks.
UPDATE plugins
SET state = :state,
    last_check_time = :check_time,
    last_check_error = :error,
    tools = CASE WHEN :set_tools THEN :tools ELSE tools END
WHERE id = :id AND create_time = :create_time;
