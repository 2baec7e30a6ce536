-- Folio's queued work. The tasks table is the truth; Celery only carries task ids.
CREATE TABLE tasks (
    id               varchar(26) PRIMARY KEY,
    -- The owner; NULL once an account-deletion task has finished (an anonymous receipt).
    user_id          varchar(26),
    kind             text        NOT NULL,
    params           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status           text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    progress         integer     NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    -- The {"success": ..., "result" | "error": ...} dict, once final.
    result           jsonb,
    error            text        NOT NULL DEFAULT '',
    attempts         integer     NOT NULL DEFAULT 0,
    cancel_requested boolean     NOT NULL DEFAULT false,
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

-- One live (or completed) task per key; a failed or cancelled task frees its key.
CREATE UNIQUE INDEX tasks_idempotency_key_idx ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status NOT IN ('failed', 'cancelled');
CREATE INDEX tasks_user_id_idx ON tasks (user_id, id DESC);
CREATE INDEX tasks_user_id_status_idx ON tasks (user_id, status, id DESC);

-- Messages waiting to be published to the broker, written in the same transaction as
-- the task row (transactional outbox). The relay deletes a row once it is published.
CREATE TABLE outbox (
    id           bigserial   PRIMARY KEY,
    task_id      varchar(26) NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    kind         text        NOT NULL,
    available_at timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbox_available_at_idx ON outbox (available_at, id);
CREATE INDEX outbox_task_id_idx ON outbox (task_id);

-- Wakes the relay as soon as a message is committed.
CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('folio_task_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();

-- Wakes long polls (GET /tasks/{id}?wait_seconds=) when what a client sees changes.
CREATE FUNCTION notify_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('folio_task_changed', NEW.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_notify_changed AFTER UPDATE ON tasks
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.progress IS DISTINCT FROM NEW.progress
          OR OLD.cancel_requested IS DISTINCT FROM NEW.cancel_requested)
    EXECUTE FUNCTION notify_task_changed();
