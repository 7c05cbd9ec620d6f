-- XEP-0163 Personal Eventing Protocol: each account's virtual pubsub service (SQLite).
-- Nodes and items hang off accounts.id, so deleting an account removes them.

CREATE TABLE pep_nodes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id    INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    node          TEXT    NOT NULL,
    access_model  TEXT    NOT NULL CHECK (access_model IN ('open', 'presence', 'whitelist')),
    max_items     INTEGER,                     -- NULL: 'max' (the server's cap)
    persist_items INTEGER NOT NULL DEFAULT 1 CHECK (persist_items IN (0, 1)),
    send_last     TEXT    NOT NULL DEFAULT 'on_sub_and_presence'
                  CHECK (send_last IN ('never', 'on_sub', 'on_sub_and_presence')),
    UNIQUE (account_id, node)
);

CREATE TABLE pep_items (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,   -- publish order (a re-publish moves last)
    node_id   INTEGER NOT NULL REFERENCES pep_nodes (id) ON DELETE CASCADE,
    item_id   TEXT    NOT NULL,
    publisher TEXT    NOT NULL,
    stamp_ms  INTEGER NOT NULL,                    -- unix milliseconds
    payload   TEXT    NOT NULL,                    -- the serialized payload element
    UNIQUE (node_id, item_id)
);

CREATE INDEX pep_items_node ON pep_items (node_id, id);

-- Explicit XEP-0060 subscriptions (entities without a presence subscription, e.g. OMEMO
-- peers that are not contacts); contacts are subscribed implicitly and not listed here.
CREATE TABLE pep_subscriptions (
    node_id INTEGER NOT NULL REFERENCES pep_nodes (id) ON DELETE CASCADE,
    jid     TEXT    NOT NULL,                  -- bare or full JID of the subscriber
    PRIMARY KEY (node_id, jid)
) WITHOUT ROWID;
