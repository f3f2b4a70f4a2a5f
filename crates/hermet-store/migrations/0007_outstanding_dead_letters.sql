-- Read-your-writes must not call a write applied while one of its changes sits in the dead
-- letters (see `hermet_store::sync::covered`).

-- cdc mode: the records a projector dead-lettered and nobody has applied since, with a lower
-- bound of their transaction's commit LSN (the change's own position; for a record that could
-- not even be decoded, the partition's position before it). Written in the same transaction as
-- the watermarks that move past the record; `hermet admin dlq replay` deletes a row in the
-- transaction that applies its record. A projector covers nothing at or past its oldest one.
CREATE TABLE hermet_projector_dead_letters (
    projector     TEXT   NOT NULL,
    topic         TEXT   NOT NULL,
    partition     INT    NOT NULL,
    source_offset BIGINT NOT NULL,
    lsn           BIGINT NOT NULL,
    error         TEXT   NOT NULL,
    dead_at       BIGINT NOT NULL,
    PRIMARY KEY (projector, topic, partition, source_offset)
);

-- async mode: a row set aside keeps its `wal_lsn`, so reads keep waiting for it as they did while
-- it was pending. Rows set aside before this migration have none: they count as older than any
-- write until replayed.
ALTER TABLE hermet_outbox_dead ADD COLUMN wal_lsn PG_LSN;
