-- Operations: the last audit results, for `hermet admin status`.

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
