-- XEP-0054 vCards, XEP-0049 private XML storage, XEP-0357 push registrations (PostgreSQL).
-- All hang off accounts.id with ON DELETE CASCADE, so deleting an account removes them.

CREATE TABLE vcards (
    account_id BIGINT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    vcard      TEXT   NOT NULL,                 -- the serialized <vCard xmlns='vcard-temp'/>
    photo_hash TEXT,                            -- XEP-0153: hex SHA-1 of the PHOTO BINVAL
    updated_at BIGINT NOT NULL                  -- unix seconds
);

CREATE TABLE private_xml (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    namespace  TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    xml        TEXT   NOT NULL,                 -- the serialized stored element
    PRIMARY KEY (account_id, namespace, name)
);

CREATE TABLE push_registrations (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    service    TEXT   NOT NULL,                 -- the XMPP Push Service JID
    node       TEXT   NOT NULL,
    options    TEXT,                            -- serialized publish-options form, if any
    created_at BIGINT NOT NULL,                 -- unix seconds
    PRIMARY KEY (account_id, service, node)
);
