-- Example pipeline schema: a generic job table and the analysis results table.
-- pipemon only reads these; the indexes below are what its queries need (see docs/exporter.md, "The indexes a job table needs").
CREATE TABLE IF NOT EXISTS jobs (
    id          bigserial PRIMARY KEY,
    queue       text        NOT NULL,
    status      text        NOT NULL DEFAULT 'waiting',
    created_at  timestamptz NOT NULL DEFAULT now(),
    run_at      timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    attempts    integer     NOT NULL DEFAULT 0,
    payload     jsonb,
    error       text,       -- why a failed job failed (FFMPEG_FAILED, ...): failure_reason
    stage       text        -- the pipeline stage the job runs (MERGING, ...): stage
);
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS error text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS stage text;
-- gauges (jobs in active states, by queue and state): the active jobs only, with every column the
-- query reads, so that it reads the index alone (an index-only scan). Its WHERE lists the raw states
-- the mapping makes active (`pipemon check-config --explain` prints it for a config).
CREATE INDEX IF NOT EXISTS jobs_active_idx ON jobs (queue, status) INCLUDE (run_at, created_at, started_at)
    WHERE status IN ('retrying', 'running', 'scheduled', 'waiting');
-- the unmapped-state check (and the gauges without the index above)
CREATE INDEX IF NOT EXISTS jobs_status_queue_idx ON jobs (status, queue);
-- incremental reads of finished and started jobs
CREATE INDEX IF NOT EXISTS jobs_finished_at_idx ON jobs (finished_at, id);
CREATE INDEX IF NOT EXISTS jobs_started_at_idx ON jobs (started_at, id);

CREATE TABLE IF NOT EXISTS audio_events_cache (
    id            bigserial PRIMARY KEY,
    track_id      bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    timeline      jsonb,
    processing_ms integer,
    peak_dbfs     double precision,  -- the track's peak level (dBFS): peak_dbfs
    loudness_lufs double precision   -- its integrated loudness (LUFS): loudness_lufs
);
ALTER TABLE audio_events_cache ADD COLUMN IF NOT EXISTS peak_dbfs double precision;
ALTER TABLE audio_events_cache ADD COLUMN IF NOT EXISTS loudness_lufs double precision;
CREATE INDEX IF NOT EXISTS audio_events_cache_created_at_idx ON audio_events_cache (created_at, id);
