DROP INDEX IF EXISTS customer_identities_external_idx;
DROP TABLE IF EXISTS console_sessions;
