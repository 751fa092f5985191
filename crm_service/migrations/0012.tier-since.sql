-- depends: 0011.tier-transitions
-- Since when each customer has held their tier, carried forward from run to run; the first
-- run of a database records no transitions (nothing to change from).
ALTER TABLE customer_scores ADD COLUMN tier_since date;
