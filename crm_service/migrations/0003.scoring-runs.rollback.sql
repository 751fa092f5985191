DROP TABLE IF EXISTS scoring_state;
DROP TABLE IF EXISTS customer_scores;
DROP TABLE IF EXISTS scoring_runs;
