-- depends: 0012.tier-since
-- The event outbox: lifecycle events of customers, written in the transaction that publishes a
-- scoring run (so an event exists exactly when its run went live). Ids grow in commit order:
-- publishing locks scoring_state first, so readers can page by id without skipping any.
CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type        text NOT NULL CHECK (type IN ('tier.changed', 'vip.entered', 'vip.lost',
                                              'dormant.entered', 'churn_risk.raised',
                                              'customer.erased')),
    customer_id text COLLATE "C",
    run_id      bigint,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_customer_idx ON events (customer_id) WHERE customer_id IS NOT NULL;
