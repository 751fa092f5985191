DROP TABLE IF EXISTS churn_models;
ALTER TABLE customer_scores DROP COLUMN IF EXISTS churn_risk;
ALTER TABLE customer_scores DROP COLUMN IF EXISTS churn_probability;
ALTER TABLE scoring_runs DROP COLUMN IF EXISTS churn_horizon_days;
