-- depends: 0010.tiers
-- Tier history: one row per customer and run in which their tier changed (from NULL the first
-- time they are scored). "Tier since" is the as_of of their latest row.
CREATE TABLE tier_transitions (
    customer_id text COLLATE "C" NOT NULL,
    run_id      bigint NOT NULL,
    from_tier   text,
    to_tier     text NOT NULL,
    PRIMARY KEY (customer_id, run_id)
);
CREATE INDEX tier_transitions_run_idx ON tier_transitions (run_id);
