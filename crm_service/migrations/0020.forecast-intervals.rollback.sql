ALTER TABLE customer_scores
    DROP COLUMN purchases_365_p10,
    DROP COLUMN purchases_365_p90,
    DROP COLUMN spend_365_p10,
    DROP COLUMN spend_365_p90,
    DROP COLUMN p_alive_note;
