-- depends: 0004.scoring-queue
-- Diagnostics behind a run's plots (kept apart from the small model artifact).
ALTER TABLE scoring_runs ADD COLUMN diagnostics jsonb;
