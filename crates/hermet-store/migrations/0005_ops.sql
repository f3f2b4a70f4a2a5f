-- Operations: the last audit results (for `hermet admin status`) and the helper the online
-- rebuild uses to find write-side rows changed after a snapshot.

-- One row per audit run (the CLI's and the background audit's); the newest few are kept.
CREATE TABLE hermet_audit_runs (
    id                BIGSERIAL PRIMARY KEY,
    source            TEXT             NOT NULL,
    finished_at       BIGINT           NOT NULL,
    buckets           INT              NOT NULL,
    audited_buckets   INT              NOT NULL,
    differing_buckets INT              NOT NULL,
    expected_rows     BIGINT           NOT NULL,
    findings          BIGINT           NOT NULL,
    consistency_rate  DOUBLE PRECISION NOT NULL,
    -- findings counted per "table kind"
    summary           JSONB            NOT NULL,
    repaired          BOOLEAN          NOT NULL
);

-- A row's `xmin` (32 bits) as a full 64-bit transaction id, given `horizon`, the xmax of a
-- current snapshot: the current epoch, or the one before when that would lie in the future.
-- Exact for every transaction of the last 2^31; an older (frozen) xid may map to a recent one,
-- which only ever makes a row look changed, never unchanged.
CREATE FUNCTION hermet_full_xid(x xid, horizon BIGINT) RETURNS xid8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT GREATEST(CASE WHEN v > horizon THEN v - 4294967296 ELSE v END, 3)::text::xid8
      FROM (SELECT ((horizon >> 32) << 32) | x::text::bigint AS v) s
$$;
