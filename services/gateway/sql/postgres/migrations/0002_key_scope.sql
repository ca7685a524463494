-- A key's scope: 'tenant' keys act for their tenant only; 'admin' keys (operators) may
-- also call the admin APIs the gateway forwards, for any tenant. Existing keys stay
-- tenant keys.
ALTER TABLE api_keys
    ADD COLUMN scope TEXT NOT NULL DEFAULT 'tenant' CHECK (scope IN ('tenant', 'admin'));
