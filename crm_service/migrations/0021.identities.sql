-- depends: 0020.forecast-intervals
-- One person across channels (issue 20): merged customers stay as aliases of the survivor, every
-- merge is recorded with what it moved (so it can be undone), rule links that need a person's
-- judgement wait in a review list, and phones are matched in E.164.

-- Like orders, channel identities carry no foreign key to customers: its per-row trigger (a
-- FOR KEY SHARE probe of customers for every account) more than doubled a bulk import of orders
-- sent by buyer id. Every writer creates the customer in the same transaction; erasure deletes a
-- customer's identities explicitly.
ALTER TABLE customer_identities DROP CONSTRAINT customer_identities_customer_id_fkey;

-- One index for both lookups of an account: by (channel, id), and by id on any channel (the
-- console's search). The key's columns swap, and the separate external_id index goes.
ALTER TABLE customer_identities DROP CONSTRAINT customer_identities_pkey,
    ADD CONSTRAINT customer_identities_pkey PRIMARY KEY (external_id, channel);
DROP INDEX customer_identities_external_idx;

-- A merged customer keeps its row (its own contact data, so a search by its phone or email still
-- finds the person) and points at the survivor; lookups of it answer with the survivor.
-- (No foreign key on merged_into: a first import builds the primary key of customers after the
-- load, which a self-reference would forbid. Merges write it, erasure deletes aliases first.)
ALTER TABLE customers
    ADD COLUMN merged_into text COLLATE "C",
    ADD COLUMN merge_id bigint,
    ADD CONSTRAINT customers_not_merged_into_self CHECK (merged_into <> customer_id);
CREATE INDEX customers_merged_into_idx ON customers (merged_into) WHERE merged_into IS NOT NULL;
-- The aliases alone, small: the lookup lane probes it for every id it answers.
CREATE INDEX customers_alias_idx ON customers (customer_id) WHERE merged_into IS NOT NULL;

-- Every merge: who, when, why, and (in the two tables below and `details`) what moved.
CREATE TABLE customer_merges (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    survivor_id text COLLATE "C" NOT NULL,
    merged_ids  text[] NOT NULL CHECK (cardinality(merged_ids) >= 1),
    actor       text NOT NULL,       -- an API key id, 'cli', or 'rule:phone' / 'rule:email'
    reason      text,
    -- {"aliases": {alias: its previous target}, "filled": {field: customer it came from}}
    details     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    undone_at   timestamptz,
    undone_by   text
);
CREATE INDEX customer_merges_survivor_idx ON customer_merges (survivor_id);
CREATE INDEX customer_merges_merged_idx ON customer_merges USING gin (merged_ids);

CREATE TABLE customer_merge_orders (
    merge_id bigint NOT NULL REFERENCES customer_merges (id) ON DELETE CASCADE,
    channel  text COLLATE "C" NOT NULL,
    order_id text COLLATE "C" NOT NULL,
    from_id  text COLLATE "C" NOT NULL,
    PRIMARY KEY (merge_id, channel, order_id)
);

CREATE TABLE customer_merge_identities (
    merge_id    bigint NOT NULL REFERENCES customer_merges (id) ON DELETE CASCADE,
    channel     text COLLATE "C" NOT NULL,
    external_id text COLLATE "C" NOT NULL,
    from_id     text COLLATE "C" NOT NULL,
    PRIMARY KEY (merge_id, channel, external_id)
);

-- Pairs a linking rule matched but did not merge: each holds an account on `channel` with a
-- different id (usually two people sharing a phone). For an operator to review.
CREATE TABLE identity_link_candidates (
    customer_a text COLLATE "C" NOT NULL,
    customer_b text COLLATE "C" NOT NULL,
    rule       text NOT NULL CHECK (rule IN ('phone', 'email')),
    channel    text COLLATE "C" NOT NULL,
    found_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_a, customer_b, rule),
    CHECK (customer_a < customer_b)
);
CREATE INDEX identity_link_candidates_b_idx ON identity_link_candidates (customer_b);

-- Which country code the stored phone_normalized values were written with (one row; none until
-- the service has normalised them: `crm-service migrate` does, and again when
-- CRM_PHONE_COUNTRY_CODE changes).
CREATE TABLE phone_normalization (
    only_row     boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    country_code text,
    scheme       text NOT NULL,
    done_at      timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE events DROP CONSTRAINT events_type_check;
ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type IN (
    'tier.changed', 'vip.entered', 'vip.lost', 'dormant.entered', 'churn_risk.raised',
    'customer.erased', 'customer.merged', 'customer.unmerged'));
