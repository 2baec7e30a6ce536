-- Documents, their revisions, attachments and PDF exports (DESIGN §10).

CREATE TABLE documents (
    id          varchar(26) PRIMARY KEY,
    user_id     varchar(26) NOT NULL,
    title       text        NOT NULL,
    content     text        NOT NULL DEFAULT '',
    revision    bigint      NOT NULL DEFAULT 1,
    etag        text        NOT NULL,
    word_count  bigint      NOT NULL DEFAULT 0,
    summary     text        NOT NULL DEFAULT '',
    -- Full-text search, the title weighted above the body. A tsvector holds at most
    -- 1 MiB, so the body is indexed from its first 256 KiB characters.
    search      tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', left(content, 262144)), 'B')
    ) STORED,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Lists are keyset pages of one user's documents, most recently changed first.
CREATE INDEX documents_user_updated_idx ON documents (user_id, updated_at DESC, id DESC);
CREATE INDEX documents_search_idx ON documents USING gin (search);

-- Every revision of a document, the current one included; a change adds one.
CREATE TABLE revisions (
    document_id   varchar(26) NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    revision      bigint      NOT NULL,
    title         text        NOT NULL,
    content       text        NOT NULL,
    author        text        NOT NULL,
    restored_from bigint,
    word_count    bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (document_id, revision)
);

CREATE TABLE attachments (
    id           varchar(26) PRIMARY KEY,
    document_id  varchar(26) NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    user_id      varchar(26) NOT NULL,
    filename     text        NOT NULL,
    content_type text        NOT NULL,
    size_bytes   bigint      NOT NULL,
    status       text        NOT NULL DEFAULT 'pending',
    object_key   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX attachments_document_idx ON attachments (document_id, id);
-- Uploads never completed are swept.
CREATE INDEX attachments_pending_idx ON attachments (created_at) WHERE status = 'pending';

-- Stored PDFs, one per rendering of a revision with the attachments it showed.
CREATE TABLE exports (
    document_id varchar(26) NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    render_key  text        NOT NULL,
    revision    bigint      NOT NULL,
    object_key  text        NOT NULL,
    pages       integer     NOT NULL,
    size_bytes  bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (document_id, render_key)
);

-- Stored objects whose rows are gone: written in the transaction that deletes the rows,
-- removed once storage has deleted them, so nothing is orphaned when storage is down.
CREATE TABLE object_deletions (
    id         varchar(26) PRIMARY KEY,
    prefix     text        NOT NULL,
    attempts   integer     NOT NULL DEFAULT 0,
    last_error text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
