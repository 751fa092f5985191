DELETE FROM webhook_deliveries WHERE event_id IN
    (SELECT id FROM events WHERE type IN ('customer.merged', 'customer.unmerged'));
DELETE FROM events WHERE type IN ('customer.merged', 'customer.unmerged');
ALTER TABLE events DROP CONSTRAINT events_type_check;
ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type IN (
    'tier.changed', 'vip.entered', 'vip.lost', 'dormant.entered', 'churn_risk.raised',
    'customer.erased'));
DROP TABLE IF EXISTS phone_normalization;
DROP TABLE IF EXISTS identity_link_candidates;
DROP TABLE IF EXISTS customer_merge_identities;
DROP TABLE IF EXISTS customer_merge_orders;
DROP TABLE IF EXISTS customer_merges;
DROP INDEX IF EXISTS customers_alias_idx;
DROP INDEX IF EXISTS customers_merged_into_idx;
ALTER TABLE customers DROP CONSTRAINT IF EXISTS customers_not_merged_into_self,
    DROP COLUMN IF EXISTS merge_id, DROP COLUMN IF EXISTS merged_into;
DELETE FROM customer_identities i
 WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = i.customer_id);
ALTER TABLE customer_identities ADD CONSTRAINT customer_identities_customer_id_fkey
    FOREIGN KEY (customer_id) REFERENCES customers (customer_id) ON DELETE CASCADE;
CREATE INDEX IF NOT EXISTS customer_identities_external_idx ON customer_identities (external_id);
ALTER TABLE customer_identities DROP CONSTRAINT customer_identities_pkey,
    ADD CONSTRAINT customer_identities_pkey PRIMARY KEY (channel, external_id);
