-- Folio users, keyed on Google's subject identifier.
CREATE TABLE users (
    id           varchar(26) PRIMARY KEY,
    google_sub   text        NOT NULL UNIQUE,
    email        text        NOT NULL,
    display_name text        NOT NULL DEFAULT '',
    picture_url  text        NOT NULL DEFAULT '',
    is_premium   boolean     NOT NULL DEFAULT false,
    is_admin     boolean     NOT NULL DEFAULT false,
    options      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX users_email_idx ON users (lower(email));
