DROP INDEX IF EXISTS scoring_runs_queued_idx;
ALTER TABLE scoring_runs DROP COLUMN IF EXISTS progress;
ALTER TABLE scoring_runs DROP COLUMN IF EXISTS started_at;
DELETE FROM scoring_runs WHERE status = 'queued';
ALTER TABLE scoring_runs DROP CONSTRAINT scoring_runs_status_check;
ALTER TABLE scoring_runs ADD CONSTRAINT scoring_runs_status_check
    CHECK (status IN ('running', 'succeeded', 'failed'));
