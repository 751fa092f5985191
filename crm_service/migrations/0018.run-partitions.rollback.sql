-- Back to one unpartitioned customer_scores holding every kept run's rows.
CREATE TABLE customer_scores_unpartitioned (
    LIKE customer_scores INCLUDING DEFAULTS INCLUDING CONSTRAINTS
);
INSERT INTO customer_scores_unpartitioned SELECT * FROM customer_scores;
DROP TABLE customer_scores;
DO $$
DECLARE
    part text;
BEGIN
    -- Detached score tables of unpublished runs.
    FOR part IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = current_schema() AND c.relkind = 'r'
              AND c.relname ~ '^customer_scores_r[0-9]+$'
    LOOP
        EXECUTE format('DROP TABLE %I', part);
    END LOOP;
END $$;
ALTER TABLE customer_scores_unpartitioned RENAME TO customer_scores;
ALTER TABLE customer_scores ADD PRIMARY KEY (run_id, customer_id);
ALTER TABLE scoring_runs DROP COLUMN previous_run_id, DROP COLUMN scores_retired_at;
