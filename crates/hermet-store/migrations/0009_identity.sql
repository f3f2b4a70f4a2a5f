-- Identity for real deployments: users imported from the product's own accounts (by an external
-- id), their auth state, and the API keys of the product's app server.
--
-- `user_auth` is a table of its own on purpose: it is not in the CDC publication (0003 lists
-- the captured tables), so disabling a user or revoking tokens never produces read-side work.
-- API processes learn of a change through `NOTIFY hermet_auth, '<user_id>'` instead.
CREATE TABLE user_auth (
    user_id            BIGINT  PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- The product's id of this user; NULL for users who signed up through `POST /v1/users`.
    external_id        TEXT    UNIQUE,
    disabled           BOOLEAN NOT NULL DEFAULT false,
    -- Unix ms: tokens issued before it are refused.
    tokens_valid_after BIGINT  NOT NULL DEFAULT 0,
    updated_at         BIGINT  NOT NULL
);

-- Server-to-server keys. Only the SHA-256 of a key is kept; `prefix` (its first characters)
-- lets an operator tell keys apart.
CREATE TABLE api_keys (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT   NOT NULL,
    key_hash     BYTEA  NOT NULL UNIQUE,
    prefix       TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
