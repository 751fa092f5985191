-- depends: 0015.erasure
-- Agent console sign-ins. The browser holds a random session token in an HttpOnly cookie; only
-- its SHA-256 is stored here, so reading this table does not let anyone take over a session.
-- A session belongs to the API key it was opened with: revoking or deleting the key ends it.
CREATE TABLE console_sessions (
    token_hash   bytea PRIMARY KEY,
    key_id       text NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);
CREATE INDEX console_sessions_key_idx ON console_sessions (key_id);

-- The console's one search box finds a channel account by its external id alone (an agent
-- reading a Tmall buyer id off a ticket need not say which channel it is from).
CREATE INDEX customer_identities_external_idx ON customer_identities (external_id);
