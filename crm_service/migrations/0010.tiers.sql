-- depends: 0009.churn
-- Lifecycle tiers, value and RFM segments and recommended actions per customer and run; the
-- tier policy, versioned (a new version per change; the version in force is stored with a run).
CREATE TABLE tier_policies (
    version    integer PRIMARY KEY CHECK (version > 0),
    policy     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL
);
ALTER TABLE scoring_runs ADD COLUMN tier_policy_version integer REFERENCES tier_policies (version);
ALTER TABLE customer_scores
    ADD COLUMN tier text CHECK (tier IN ('new', 'active', 'dormant', 'high_value')),
    ADD COLUMN value_segment text CHECK (value_segment IN ('low', 'medium', 'high')),
    ADD COLUMN rfm_recency smallint CHECK (rfm_recency BETWEEN 1 AND 5),
    ADD COLUMN rfm_frequency smallint CHECK (rfm_frequency BETWEEN 1 AND 5),
    ADD COLUMN rfm_monetary smallint CHECK (rfm_monetary BETWEEN 1 AND 5),
    ADD COLUMN rfm_segment text,
    ADD COLUMN recommended_action text;
