-- name: insert_policy_set
-- Inserts nothing when the id or the request_id is taken.
INSERT INTO policy_sets
    (id, description, rules, version, request_id, request_hash, create_time, update_time)
VALUES (:id, :description, :rules, 1, :request_id, :request_hash, :now, :now)
ON CONFLICT DO NOTHING
RETURNING id, description, rules, version, create_time, update_time;

-- name: policy_set_by_request_id
SELECT id, description, rules, version, create_time, update_time, request_hash
FROM policy_sets
WHERE request_id = :request_id AND request_id <> '';

-- name: get_policy_set
SELECT id, description, rules, version, create_time, update_time
FROM policy_sets
WHERE id = :id;

-- name: list_policy_sets
SELECT id, description, rules, version, create_time, update_time
FROM policy_sets
WHERE id > :after
ORDER BY id
LIMIT :limit;

-- name: update_policy_set
-- The compare-and-set: changes the set only while the etag presented is current
-- (:check_etag = 0 skips the check), and bumps the version in the same statement.
UPDATE policy_sets
SET description = CASE WHEN :set_description THEN :description ELSE description END,
    rules = CASE WHEN :set_rules THEN :rules ELSE rules END,
    version = version + 1,
    update_time = :now
WHERE id = :id
  AND (:check_etag = 0 OR (version = :version AND create_time = :create_time))
RETURNING id, description, rules, version, create_time, update_time;

-- name: delete_policy_set
DELETE FROM policy_sets
WHERE id = :id
  AND (:check_etag = 0 OR (version = :version AND create_time = :create_time));
