ALTER TABLE customer_scores
    DROP COLUMN IF EXISTS tier, DROP COLUMN IF EXISTS value_segment,
    DROP COLUMN IF EXISTS rfm_recency, DROP COLUMN IF EXISTS rfm_frequency,
    DROP COLUMN IF EXISTS rfm_monetary, DROP COLUMN IF EXISTS rfm_segment,
    DROP COLUMN IF EXISTS recommended_action;
ALTER TABLE scoring_runs DROP COLUMN IF EXISTS tier_policy_version;
DROP TABLE IF EXISTS tier_policies;
