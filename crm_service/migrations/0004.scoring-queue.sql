-- depends: 0003.scoring-runs
-- Scoring runs requested over the API are queued and picked up by a worker.

ALTER TABLE scoring_runs DROP CONSTRAINT scoring_runs_status_check;
ALTER TABLE scoring_runs ADD CONSTRAINT scoring_runs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed'));
ALTER TABLE scoring_runs ADD COLUMN started_at timestamptz;
ALTER TABLE scoring_runs ADD COLUMN progress text;
CREATE INDEX scoring_runs_queued_idx ON scoring_runs (id) WHERE status = 'queued';
