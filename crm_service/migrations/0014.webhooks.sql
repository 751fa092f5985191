-- depends: 0013.events
-- Webhook subscriptions and their deliveries (issue 6).
--
-- A subscription reads the event outbox from its cursor (events.id); the worker copies matching
-- events into webhook_deliveries (one row per subscription and event, so a delivery id is stable
-- across retries) and posts them. The signing secret is stored encrypted with the server key.
CREATE TABLE webhooks (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url                  text NOT NULL,
    event_types          text[] NOT NULL,
    filters              jsonb NOT NULL DEFAULT '{}',
    description          text,
    secret_enc           bytea NOT NULL,
    status               text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    disabled_reason      text,
    disabled_at          timestamptz,
    event_cursor         bigint NOT NULL,
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    paused_until         timestamptz,
    created_by           text,
    created_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    webhook_id       bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         bigint NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    first_attempt_at timestamptz,
    delivered_at     timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, event_id)
);
-- The worker's queue: the oldest due delivery of a subscription.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (webhook_id, next_attempt_at)
    WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    started_at    timestamptz NOT NULL,
    duration_ms   double precision NOT NULL,
    status_code   integer,
    error         text
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, attempt);

-- Scheduled re-scoring: one row per schedule slot; the worker that inserts it queues the run,
-- so two workers never queue the same slot.
CREATE TABLE schedule_slots (
    slot       timestamptz PRIMARY KEY,
    run_id     bigint,
    note       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
