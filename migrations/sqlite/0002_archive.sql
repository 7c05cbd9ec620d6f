-- XEP-0313 user message archives and XEP-0441 archiving preferences (SQLite).

CREATE TABLE archive (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- archive order; never reused
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    stanza_id  TEXT    NOT NULL,                   -- XEP-0359 id: the public, opaque UID
    stamp_ms   INTEGER NOT NULL,                   -- unix milliseconds when archived
    with_bare  TEXT    NOT NULL,                   -- the other party's bare JID
    with_res   TEXT    NOT NULL DEFAULT '',        -- its resource ('' when none)
    origin_id  TEXT,                               -- XEP-0359 origin-id of the sender
    outgoing   INTEGER NOT NULL CHECK (outgoing IN (0, 1)),
    stanza     TEXT    NOT NULL                    -- the message as sent (from stamped)
);

-- Paging over the whole archive (forwards, backwards, after/before a row) and the FK cascade.
CREATE INDEX archive_account_id ON archive (account_id, id);
-- The 'with' filter, in archive order.
CREATE INDEX archive_account_with ON archive (account_id, with_bare, id);
-- The 'start'/'end' filters (resolved to the first/last row in that time; see archive.rs).
CREATE INDEX archive_account_stamp ON archive (account_id, stamp_ms, id);
-- UID lookups (RSM after/before, before-id/after-id/ids); unique per archive.
CREATE UNIQUE INDEX archive_account_stanza_id ON archive (account_id, stanza_id);
-- Retention: the expiry task deletes the oldest rows of all archives.
CREATE INDEX archive_stamp ON archive (stamp_ms);

CREATE TABLE archive_prefs (
    account_id   INTEGER PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    default_mode TEXT    NOT NULL CHECK (default_mode IN ('always', 'never', 'roster')),
    always_jids  TEXT    NOT NULL DEFAULT '',      -- newline-separated JIDs
    never_jids   TEXT    NOT NULL DEFAULT ''
);
