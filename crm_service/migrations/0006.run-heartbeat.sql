-- depends: 0005.run-diagnostics
-- A run's last sign of life, so a run whose worker died can be taken over.
ALTER TABLE scoring_runs ADD COLUMN heartbeat_at timestamptz;
UPDATE scoring_runs SET heartbeat_at = coalesce(finished_at, started_at, created_at);
