ALTER TABLE scoring_runs DROP COLUMN IF EXISTS heartbeat_at;
