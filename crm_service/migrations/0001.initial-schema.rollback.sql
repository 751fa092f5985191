DROP TABLE IF EXISTS idempotency_records;
DROP TABLE IF EXISTS api_keys;
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS customer_identities;
DROP TABLE IF EXISTS customers;
