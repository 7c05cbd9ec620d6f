-- XEP-0191 blocklists: one row per blocked JID (normalized; bare, full, domain or
-- domain/resource), removed with the account.
CREATE TABLE blocklist (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid        TEXT   NOT NULL,
    PRIMARY KEY (account_id, jid)
);
