-- depends: 0019.safe-operations
-- Forecasts with their uncertainty (issue 19): each customer's central 80% interval (10th and
-- 90th percentiles) of purchases and of spend in the next 365 days, and why P(alive) and the
-- churn band may look contradictory (the vocabulary's ALIVE_NOTES). Runs published before this
-- migration have NULL here; a new run fills them.
ALTER TABLE customer_scores
    ADD COLUMN purchases_365_p10 integer,
    ADD COLUMN purchases_365_p90 integer,
    ADD COLUMN spend_365_p10 double precision,
    ADD COLUMN spend_365_p90 double precision,
    ADD COLUMN p_alive_note text CHECK (p_alive_note IN ('not_estimated', 'infrequent_buyer'));
