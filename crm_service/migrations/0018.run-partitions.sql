-- depends: 0017.run-plots
-- Per-run storage: customer_scores becomes a table partitioned by run (LIST on run_id), one
-- partition per published run, named customer_scores_r<run id>. A run writes its partition
-- before publishing; publishing attaches it and switches the pointer in one transaction;
-- retention drops whole partitions. Every existing run's rows move to their own partition
-- (rows whose run_id has no run record, unreachable by any reader, are not carried over).
-- The key leads with customer_id: a lookup that cannot prune partitions (the run id comes from
-- a join) probes each partition's index instead of scanning it, and erasure finds a customer's
-- rows in every run the same way.
ALTER TABLE scoring_runs
    ADD COLUMN previous_run_id   bigint,       -- the run live when this one was published
    ADD COLUMN scores_retired_at timestamptz;  -- set when retention dropped its score rows

-- Existing runs: the run live before each was the succeeded run published just before it.
UPDATE scoring_runs r SET previous_run_id = p.prev
FROM (SELECT id, lag(id) OVER (ORDER BY finished_at, id) AS prev
      FROM scoring_runs WHERE status = 'succeeded') p
WHERE p.id = r.id;

ALTER TABLE customer_scores RENAME TO customer_scores_unpartitioned;
ALTER INDEX customer_scores_pkey RENAME TO customer_scores_unpartitioned_pkey;
CREATE TABLE customer_scores (
    LIKE customer_scores_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (customer_id, run_id)
) PARTITION BY LIST (run_id);

DO $$
DECLARE
    run bigint;
    part text;
BEGIN
    FOR run IN SELECT s.id FROM scoring_runs s WHERE EXISTS
            (SELECT 1 FROM customer_scores_unpartitioned u WHERE u.run_id = s.id) ORDER BY s.id
    LOOP
        part := 'customer_scores_r' || run;
        EXECUTE format('CREATE TABLE %I (LIKE customer_scores INCLUDING DEFAULTS'
                       ' INCLUDING CONSTRAINTS, CHECK (run_id = %s))', part, run);
        EXECUTE format('INSERT INTO %I SELECT * FROM customer_scores_unpartitioned'
                       ' WHERE run_id = %s ORDER BY customer_id', part, run);
        EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (customer_id, run_id)', part);
        EXECUTE format('ALTER TABLE customer_scores ATTACH PARTITION %I FOR VALUES IN (%s)',
                       part, run);
    END LOOP;
END $$;

-- Published runs without rows (none expected) say so rather than pointing at nothing.
UPDATE scoring_runs SET scores_retired_at = now()
WHERE status = 'succeeded' AND to_regclass('customer_scores_r' || id) IS NULL;

DROP TABLE customer_scores_unpartitioned;
