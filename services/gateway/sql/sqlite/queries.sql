-- name: insert_key
INSERT INTO api_keys (key_id, tenant, principal, secret_sha256, create_time, scope)
VALUES (:key_id, :tenant, :principal, :secret_sha256, :create_time, :scope);

-- name: get_key
SELECT key_id, tenant, principal, secret_sha256, create_time, revoke_time, scope
FROM api_keys
WHERE key_id = :key_id;

-- name: revoke_key
-- Revoking twice keeps the first revocation time.
UPDATE api_keys
SET revoke_time = COALESCE(revoke_time, :revoke_time)
WHERE key_id = :key_id
RETURNING key_id, tenant, principal, secret_sha256, create_time, revoke_time, scope;

-- name: list_keys
SELECT key_id, tenant, principal, secret_sha256, create_time, revoke_time, scope
FROM api_keys
WHERE tenant = :tenant
ORDER BY create_time, key_id;
