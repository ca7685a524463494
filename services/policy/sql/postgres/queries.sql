-- name: insert_policy_set
-- Inserts nothing when the id or the request_id is taken.
INSERT INTO policy_sets
    (id, description, rules, version, request_id, request_hash, create_time, update_time)
VALUES ($1, $2, $3, 1, $4, $5, $6, $6)
ON CONFLICT DO NOTHING
RETURNING id, description, rules, version, create_time, update_time;

-- name: policy_set_by_request_id
SELECT id, description, rules, version, create_time, update_time, request_hash
FROM policy_sets
WHERE request_id = $1 AND request_id <> '';

-- name: get_policy_set
SELECT id, description, rules, version, create_time, update_time
FROM policy_sets
WHERE id = $1;

-- name: list_policy_sets
SELECT id, description, rules, version, create_time, update_time
FROM policy_sets
-- Byte order, as on SQLite, whatever the database's collation.
WHERE id COLLATE "C" > $1
ORDER BY id COLLATE "C"
LIMIT $2;

-- name: update_policy_set
-- The compare-and-set: changes the set only while the etag presented is current ($6 false
-- skips the check), and bumps the version in the same statement. Concurrent updates wait
-- for the row lock and re-check the version, so one etag wins once.
UPDATE policy_sets
SET description = CASE WHEN $2 THEN $3 ELSE description END,
    rules = CASE WHEN $4 THEN $5::bytea ELSE rules END,
    version = version + 1,
    update_time = $9
WHERE id = $1
  AND (NOT $6 OR (version = $7 AND create_time = $8))
RETURNING id, description, rules, version, create_time, update_time;

-- name: delete_policy_set
DELETE FROM policy_sets
WHERE id = $1
  AND (NOT $2 OR (version = $3 AND create_time = $4));
