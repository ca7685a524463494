-- Prompt-cache writes: the tokens of a usage record written to the provider's prompt cache
-- (a part of input_tokens, as cached_input_tokens is), and their price per million. Records
-- made before counted them as plain input; prices made before charged them the input price,
-- which the new column keeps for them.
ALTER TABLE usage_records ADD COLUMN cache_write_input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE prices ADD COLUMN cache_write_price TEXT NOT NULL DEFAULT '';
UPDATE prices SET cache_write_price = input_price;
