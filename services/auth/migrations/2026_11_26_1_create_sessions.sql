-- Sign-in sessions. Each holds one family of refresh tokens: refresh_hash is the
-- SHA-256 of the only token that works now; rotation replaces it in one conditional
-- UPDATE, so of concurrent refreshes with the same token exactly one wins.
CREATE TABLE sessions (
    id               varchar(26) PRIMARY KEY,
    user_id          varchar(26) NOT NULL,
    refresh_hash     bytea       NOT NULL UNIQUE,
    ip_address       text        NOT NULL DEFAULT '',
    last_used_at     timestamptz NOT NULL DEFAULT now(),
    idle_expires_at  timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    revoked_at       timestamptz,
    revoked_reason   text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sessions_user_idx ON sessions (user_id, id DESC);

-- Every refresh token ever issued, by hash: a used one presented again is recognised
-- as reuse and revokes its session; a random string is just unknown.
CREATE TABLE refresh_tokens (
    token_hash  bytea       PRIMARY KEY,
    session_id  varchar(26) NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);
