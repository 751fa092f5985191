-- depends: 0006.run-heartbeat
-- Each claim of a run is an attempt; only the current attempt may report progress or publish.
ALTER TABLE scoring_runs ADD COLUMN attempt integer NOT NULL DEFAULT 1;
