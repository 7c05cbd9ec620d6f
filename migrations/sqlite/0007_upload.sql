-- XEP-0363 HTTP File Upload: one row per slot, from the slot request to the file's expiry.
-- state: 'open' (slot granted, nothing uploaded), 'uploading' (a PUT holds it), 'done' (the
-- file is on disk under the upload dir, named by slot_id). The bytes live on disk, not here;
-- a file whose row is gone (account deleted: ON DELETE CASCADE) is removed by the expiry
-- task's orphan sweep (src/upload/expiry.rs).

CREATE TABLE upload_files (
    slot_id      TEXT    NOT NULL PRIMARY KEY,    -- random, base64url (also the file name)
    account_id   INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    filename     TEXT    NOT NULL,                -- sanitized, as in the URL
    size         INTEGER NOT NULL,                -- declared = stored bytes
    content_type TEXT,                            -- declared; NULL when the request had none
    state        TEXT    NOT NULL CHECK (state IN ('open', 'uploading', 'done')),
    created_at   INTEGER NOT NULL,                -- unix seconds
    expires_at   INTEGER NOT NULL,                -- the PUT URL's end of validity
    completed_at INTEGER                          -- when the PUT finished
);

CREATE INDEX upload_files_account ON upload_files (account_id, state);
CREATE INDEX upload_files_completed ON upload_files (completed_at) WHERE state = 'done';
