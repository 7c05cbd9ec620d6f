-- XEP-0484 FAST tokens. Two slots per (account, client): 'current' (last token the client
-- used) and 'new' (issued, not used yet), so a rotation lost on a dropped link is harmless
-- (XEP-0484 §6.1). The token is sealed with the server's AEAD key (see src/fast.rs), never
-- stored in the clear.

CREATE TABLE fast_tokens (
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    client_id  TEXT    NOT NULL,                -- SASL2 <user-agent id='…'>
    slot       TEXT    NOT NULL CHECK (slot IN ('current', 'new')),
    mechanism  TEXT    NOT NULL,                -- e.g. 'HT-SHA-256-NONE'
    sealed     BLOB    NOT NULL,                -- nonce || AEAD(token)
    expires_at INTEGER NOT NULL,                -- unix seconds
    last_count INTEGER,                         -- highest <fast count=…> accepted
    PRIMARY KEY (account_id, client_id, slot)
) WITHOUT ROWID;
