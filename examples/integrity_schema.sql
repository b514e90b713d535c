-- The tracks/posts separation schema the integrity checks of examples/checks.yaml run against
-- (product doc 001). Small on purpose: the tests seed it with known violations.
--
-- No foreign keys on track_id: during the migration posts and playlists may point at tracks that
-- do not exist (yet, or any more). Finding those rows is exactly what the checks are for.
CREATE TABLE IF NOT EXISTS tracks (
    id         bigserial PRIMARY KEY,
    title      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- tracks_created: a range scan per window
CREATE INDEX IF NOT EXISTS tracks_created_at_idx ON tracks (created_at);

CREATE TABLE IF NOT EXISTS posts (
    id         bigserial PRIMARY KEY,
    post_type  text        NOT NULL CHECK (post_type IN ('audio', 'text')),
    track_id   bigint,      -- set for audio posts once migrated
    body       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- audio_posts_without_track and migration_progress_percent: an index-only count per poll
CREATE INDEX IF NOT EXISTS posts_type_track_idx ON posts (post_type, track_id);

CREATE TABLE IF NOT EXISTS playlist_entries (
    id          bigserial PRIMARY KEY,
    playlist_id bigint      NOT NULL,
    track_id    bigint      NOT NULL,
    position    integer     NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now()
);
-- playlist_entries_missing_track: an anti-join of playlist_entries against tracks' primary key
CREATE INDEX IF NOT EXISTS playlist_entries_track_idx ON playlist_entries (track_id);
