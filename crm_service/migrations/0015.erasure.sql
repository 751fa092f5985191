-- depends: 0014.webhooks
-- Erasure (GDPR Art. 17): the suppression list holds only a keyed hash (HMAC-SHA256 under a
-- subkey of the server key) of each erased customer id, so later ingestion for that id can be
-- refused without keeping the id.
CREATE TABLE erased_customers (
    id_hash    bytea PRIMARY KEY,
    erased_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX erased_customers_at_idx ON erased_customers (erased_at);
