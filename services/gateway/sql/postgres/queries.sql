-- name: insert_key
INSERT INTO api_keys (key_id, tenant, principal, secret_sha256, create_time, scope)
VALUES ($1, $2, $3, $4, $5, $6);

-- name: get_key
SELECT key_id, tenant, principal, secret_sha256, create_time, revoke_time, scope
FROM api_keys
WHERE key_id = $1;

-- name: revoke_key
-- Revoking twice keeps the first revocation time.
UPDATE api_keys
SET revoke_time = COALESCE(revoke_time, $2)
WHERE key_id = $1
RETURNING key_id, tenant, principal, secret_sha256, create_time, revoke_time, scope;

-- name: list_keys
SELECT key_id, tenant, principal, secret_sha256, create_time, revoke_time, scope
FROM api_keys
WHERE tenant = $1
ORDER BY create_time, key_id;
