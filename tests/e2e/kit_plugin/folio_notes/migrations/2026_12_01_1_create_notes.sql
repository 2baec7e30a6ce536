-- A user's notes: the user data this test-only service holds.
CREATE TABLE notes (
    id      varchar(26) PRIMARY KEY,
    user_id varchar(26) NOT NULL,
    body    text        NOT NULL
);

CREATE INDEX notes_user_id_idx ON notes (user_id);
