-- LLM usage: a row per call, and each user's running total per budget period (DESIGN §11).

CREATE TABLE calls (
    id                  varchar(26) PRIMARY KEY,
    user_id             varchar(26) NOT NULL,
    operation           text        NOT NULL,
    model               text        NOT NULL,
    period_start        timestamptz NOT NULL,
    -- What the call set aside before it started (its worst case), until it is settled.
    reserved_tokens     bigint      NOT NULL,
    input_tokens        integer     NOT NULL DEFAULT 0,
    output_tokens       integer     NOT NULL DEFAULT 0,
    cache_read_tokens   integer     NOT NULL DEFAULT 0,
    cache_write_tokens  integer     NOT NULL DEFAULT 0,
    upstream_request_id text        NOT NULL DEFAULT '',
    latency_ms          integer,
    -- running, ok, error, cancelled
    outcome             text        NOT NULL DEFAULT 'running',
    error               text        NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX calls_user_period_idx ON calls (user_id, period_start);

-- One row per user and period: tokens used by settled calls, and set aside by running
-- ones. A call reserves only while used + reserved stays within the budget.
CREATE TABLE budgets (
    user_id         varchar(26) NOT NULL,
    period_start    timestamptz NOT NULL,
    used_tokens     bigint      NOT NULL DEFAULT 0,
    reserved_tokens bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, period_start)
);
