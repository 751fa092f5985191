DROP INDEX IF EXISTS webhook_deliveries_event_idx;
DROP INDEX IF EXISTS webhook_attempts_started_brin;
DROP INDEX IF EXISTS webhook_deliveries_created_brin;
DROP INDEX IF EXISTS events_created_brin;
DROP INDEX IF EXISTS orders_paid_at_idx;
DROP INDEX IF EXISTS scoring_runs_status_idx;
DELETE FROM scoring_runs WHERE dry_run;
ALTER TABLE scoring_runs DROP COLUMN IF EXISTS allow_stale, DROP COLUMN IF EXISTS dry_run;
