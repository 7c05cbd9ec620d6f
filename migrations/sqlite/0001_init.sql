-- Starling initial schema (SQLite).
-- Everything a user owns hangs off accounts.id with ON DELETE CASCADE
-- (the connection enables PRAGMA foreign_keys).

CREATE TABLE accounts (
    id             INTEGER PRIMARY KEY,
    domain         TEXT    NOT NULL,
    username       TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,            -- unix seconds
    last_logout    INTEGER,                     -- unix seconds (XEP-0012)
    last_status    TEXT,                        -- last unavailable status text
    roster_version INTEGER NOT NULL DEFAULT 0,  -- XEP-0237, bumped on every roster change
    UNIQUE (domain, username)
);

CREATE TABLE credentials (
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    alg        TEXT    NOT NULL,                -- "sha1" | "sha256" | "sha512"
    salt       BLOB    NOT NULL,
    iterations INTEGER NOT NULL,
    stored_key BLOB    NOT NULL,
    server_key BLOB    NOT NULL,
    PRIMARY KEY (account_id, alg)
) WITHOUT ROWID;

CREATE TABLE roster_items (
    account_id   INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    contact      TEXT    NOT NULL,
    name         TEXT,
    subscription TEXT    NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask          INTEGER NOT NULL DEFAULT 0 CHECK (ask IN (0, 1)),
    approved     INTEGER NOT NULL DEFAULT 0 CHECK (approved IN (0, 1)),
    PRIMARY KEY (account_id, contact)
) WITHOUT ROWID;

CREATE TABLE roster_groups (
    account_id INTEGER NOT NULL,
    contact    TEXT    NOT NULL,
    position   INTEGER NOT NULL,                -- keeps the client's group order
    name       TEXT    NOT NULL,
    PRIMARY KEY (account_id, contact, position),
    UNIQUE (account_id, contact, name),
    FOREIGN KEY (account_id, contact)
        REFERENCES roster_items (account_id, contact) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE roster_pending_in (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,   -- arrival order
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    contact    TEXT    NOT NULL,
    stanza     TEXT    NOT NULL,
    UNIQUE (account_id, contact)
);

CREATE TABLE offline_messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,   -- arrival order
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    stamp_ms   INTEGER NOT NULL,                    -- unix milliseconds
    stanza     TEXT    NOT NULL
);

CREATE INDEX offline_messages_account ON offline_messages (account_id, id);
