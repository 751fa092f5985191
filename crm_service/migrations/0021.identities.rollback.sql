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
