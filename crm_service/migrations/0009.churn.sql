-- depends: 0008.scores-without-fk
-- Churn scoring: the horizon of each run, per-customer churn probability and band, and the
-- fitted churn model of a run (skops bytes with their SHA-256 and format version; never pickle).
ALTER TABLE scoring_runs ADD COLUMN churn_horizon_days integer NOT NULL DEFAULT 90
    CHECK (churn_horizon_days BETWEEN 7 AND 730);
ALTER TABLE customer_scores ADD COLUMN churn_probability double precision
    CHECK (churn_probability BETWEEN 0 AND 1);
ALTER TABLE customer_scores ADD COLUMN churn_risk text
    CHECK (churn_risk IN ('low', 'medium', 'high'));
CREATE TABLE churn_models (
    run_id     bigint PRIMARY KEY REFERENCES scoring_runs (id) ON DELETE CASCADE,
    artifact   bytea NOT NULL,
    meta       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
