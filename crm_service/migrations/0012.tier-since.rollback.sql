ALTER TABLE customer_scores DROP COLUMN IF EXISTS tier_since;
