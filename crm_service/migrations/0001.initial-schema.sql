-- Initial schema: customers, channel identities, orders, API keys, idempotency records.

CREATE TABLE customers (
    customer_id      text COLLATE "C" PRIMARY KEY CHECK (length(customer_id) BETWEEN 1 AND 128),
    email            text,
    email_normalized text,
    phone            text,
    phone_normalized text,
    name             text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_email_idx ON customers (email_normalized) WHERE email_normalized IS NOT NULL;
CREATE INDEX customers_phone_idx ON customers (phone_normalized) WHERE phone_normalized IS NOT NULL;

-- A customer's account on one sales channel (e.g. a Tmall buyer id).
CREATE TABLE customer_identities (
    channel     text COLLATE "C" NOT NULL,
    external_id text COLLATE "C" NOT NULL CHECK (length(external_id) BETWEEN 1 AND 128),
    customer_id text COLLATE "C" NOT NULL REFERENCES customers (customer_id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, external_id)
);
CREATE INDEX customer_identities_customer_idx ON customer_identities (customer_id);

-- One row per (channel, order_id); a resend with a changed status or amount updates it in place.
-- Ids use the "C" collation: byte order is all an identifier needs, and it keeps btree inserts
-- cheap. There is deliberately no foreign key to customers: the per-row trigger costs ~30% of a
-- bulk load, and every writer (order_store.merge_*) creates the customer in the same transaction;
-- erasure deletes a customer's orders explicitly.
CREATE TABLE orders (
    channel     text COLLATE "C" NOT NULL,
    order_id    text COLLATE "C" NOT NULL CHECK (length(order_id) BETWEEN 1 AND 128),
    customer_id text COLLATE "C" NOT NULL,
    ordered_at  timestamptz NOT NULL,
    amount      numeric(14, 2) NOT NULL CHECK (amount >= 0),
    currency    char(3) NOT NULL,
    status      text NOT NULL CHECK (status IN ('paid', 'refunded', 'cancelled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, order_id)
);
CREATE INDEX orders_customer_idx ON orders (customer_id, ordered_at);

-- API keys: only a SHA-256 digest of the secret part is stored.
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    secret_hash  bytea NOT NULL,
    scopes       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

-- Responses kept for replay of requests sent with an Idempotency-Key.
CREATE TABLE idempotency_records (
    api_key_id      text NOT NULL,
    idempotency_key text NOT NULL,
    request_hash    bytea NOT NULL,
    state           text NOT NULL CHECK (state IN ('running', 'done')),
    response_status integer,
    response_type   text,
    response_body   bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    PRIMARY KEY (api_key_id, idempotency_key)
);
CREATE INDEX idempotency_records_created_idx ON idempotency_records (created_at);
