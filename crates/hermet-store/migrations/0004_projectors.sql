-- async mode: the command's transaction writes its row changes here; the outbox worker applies
-- and deletes them. `wal_lsn` is the WAL insert position when the row was written, a lower bound
-- of its commit LSN: a read waiting for LSN L waits while any row with wal_lsn < L is pending.
CREATE TABLE hermet_outbox (
    id         BIGSERIAL PRIMARY KEY,
    changes    JSONB  NOT NULL,
    wal_lsn    PG_LSN NOT NULL DEFAULT pg_current_wal_insert_lsn(),
    created_at BIGINT NOT NULL
);

-- Outbox rows that kept failing, set aside so later rows still apply; `hermet admin dlq replay`
-- puts them back.
CREATE TABLE hermet_outbox_dead (
    id         BIGINT PRIMARY KEY,
    changes    JSONB  NOT NULL,
    error      TEXT   NOT NULL,
    attempts   INT    NOT NULL,
    failed_at  BIGINT NOT NULL
);

-- cdc mode: per projector (consumer group) and partition, the highest source LSN applied (from
-- events and from the relay's watermark markers) and the last offset applied. Written in the
-- same transaction as the view rows it accounts for.
CREATE TABLE hermet_projector_watermarks (
    projector    TEXT   NOT NULL,
    topic        TEXT   NOT NULL,
    partition    INT    NOT NULL,
    applied_lsn  BIGINT NOT NULL,
    next_offset  BIGINT NOT NULL,
    commit_ts_ms BIGINT,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (projector, topic, partition)
);
