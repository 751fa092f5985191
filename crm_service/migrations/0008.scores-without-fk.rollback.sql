ALTER TABLE customer_scores ADD CONSTRAINT customer_scores_run_id_fkey
    FOREIGN KEY (run_id) REFERENCES scoring_runs (id) ON DELETE CASCADE;
