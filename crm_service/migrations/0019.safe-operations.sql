-- depends: 0018.run-partitions
-- Safe operations (issue 17).
--
-- A dry run computes everything a run would publish and publishes nothing; allow_stale records
-- that the run was asked for past the stale-date guard (CRM_MAX_STALE_DAYS).
ALTER TABLE scoring_runs
    ADD COLUMN dry_run     boolean NOT NULL DEFAULT false,
    ADD COLUMN allow_stale boolean NOT NULL DEFAULT false;
CREATE INDEX scoring_runs_status_idx ON scoring_runs (status, id);

-- The stale-date guard reads the newest paid order before every run: one index probe.
CREATE INDEX orders_paid_at_idx ON orders (ordered_at) WHERE status = 'paid';

-- Retention of the operational tables deletes by age. Rows arrive in time order, so a BRIN
-- index (a few pages for millions of rows) finds the old ones without a scan.
CREATE INDEX events_created_brin ON events USING brin (created_at);
CREATE INDEX webhook_deliveries_created_brin ON webhook_deliveries USING brin (created_at);
CREATE INDEX webhook_attempts_started_brin ON webhook_attempts USING brin (started_at);
-- An event is pruned only once no delivery of it is left (pending, or in the delivery log):
-- one probe per event.
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
