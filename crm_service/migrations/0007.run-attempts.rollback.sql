ALTER TABLE scoring_runs DROP COLUMN IF EXISTS attempt;
