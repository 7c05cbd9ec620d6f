-- XEP-0045 persistent rooms, their affiliations, and XEP-0313 room archives (SQLite).

CREATE TABLE muc_rooms (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    service    TEXT    NOT NULL,                   -- the MUC service's domain
    node       TEXT    NOT NULL,                   -- the room's localpart
    config     TEXT    NOT NULL,                   -- the room configuration, opaque to SQL
    subject    TEXT,                               -- the last subject, NULL when never set
    subject_by TEXT    NOT NULL DEFAULT '',        -- the nick that set it
    created_ms INTEGER NOT NULL,
    UNIQUE (service, node)
);

CREATE TABLE muc_affiliations (
    room_id     INTEGER NOT NULL REFERENCES muc_rooms (id) ON DELETE CASCADE,
    jid         TEXT    NOT NULL,                  -- bare JID (or a domain), normalized
    affiliation TEXT    NOT NULL CHECK (affiliation IN ('owner', 'admin', 'member', 'outcast')),
    reason      TEXT    NOT NULL DEFAULT '',
    nick        TEXT    NOT NULL DEFAULT '',       -- a member's registered nick ('' when none)
    PRIMARY KEY (room_id, jid)
);

-- Same shape as `archive` (see 0002), owned by a room instead of an account.
CREATE TABLE muc_archive (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- archive order; never reused
    room_id    INTEGER NOT NULL REFERENCES muc_rooms (id) ON DELETE CASCADE,
    stanza_id  TEXT    NOT NULL,                   -- XEP-0359 id by='room@service'
    stamp_ms   INTEGER NOT NULL,
    with_bare  TEXT    NOT NULL,                   -- the room's bare JID
    with_res   TEXT    NOT NULL DEFAULT '',        -- the sender's nick
    origin_id  TEXT,                               -- XEP-0359 origin-id of the sender
    sender     TEXT    NOT NULL DEFAULT '',        -- the sender's real bare JID (retractions)
    stanza     TEXT    NOT NULL                    -- the message as fanned out (or a tombstone)
);

CREATE INDEX muc_archive_room_id ON muc_archive (room_id, id);
CREATE INDEX muc_archive_room_with ON muc_archive (room_id, with_bare, id);
CREATE INDEX muc_archive_room_stamp ON muc_archive (room_id, stamp_ms, id);
CREATE UNIQUE INDEX muc_archive_room_stanza_id ON muc_archive (room_id, stanza_id);
CREATE INDEX muc_archive_room_origin ON muc_archive (room_id, origin_id);
CREATE INDEX muc_archive_stamp ON muc_archive (stamp_ms);
