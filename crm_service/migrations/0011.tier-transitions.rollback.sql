DROP TABLE IF EXISTS tier_transitions;
