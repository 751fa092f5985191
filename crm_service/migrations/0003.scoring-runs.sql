-- depends: 0002.ingestion-functions
-- Scoring runs: one row per run, per-customer scores under the run, one pointer to the live run.

CREATE TABLE scoring_runs (
    id           bigserial PRIMARY KEY,
    status       text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    as_of        date NOT NULL,
    time_unit    text NOT NULL DEFAULT 'days',
    timezone     text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    error        text,
    counts       jsonb,
    models       jsonb
);

CREATE TABLE customer_scores (
    run_id                    bigint NOT NULL REFERENCES scoring_runs (id) ON DELETE CASCADE,
    customer_id               text COLLATE "C" NOT NULL,
    frequency                 integer NOT NULL,
    recency_days              integer NOT NULL,
    t_days                    integer NOT NULL,
    monetary_value            numeric(14, 2) NOT NULL,
    historic_spend            numeric(16, 2) NOT NULL,
    first_purchase            date NOT NULL,
    last_purchase             date NOT NULL,
    avg_days_between_orders   double precision,
    p_alive                   double precision NOT NULL,
    expected_purchases_30     double precision NOT NULL,
    expected_purchases_90     double precision NOT NULL,
    expected_purchases_365    double precision NOT NULL,
    expected_next_order       date,
    expected_spend            double precision,
    clv_12m                   double precision,
    PRIMARY KEY (run_id, customer_id)
);

-- Exactly one row; publishing a run is one UPDATE of this pointer.
CREATE TABLE scoring_state (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    active_run_id bigint REFERENCES scoring_runs (id)
);
INSERT INTO scoring_state (singleton, active_run_id) VALUES (true, NULL);
