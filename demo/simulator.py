"""A media pipeline at work, for the demo: tracks are uploaded, separated into stems and analysed.

Every second (`TICK`) the pipeline, in one thread of its own:
  - receives track uploads (a Poisson stream, `TRACKS_PER_SECOND`): the file goes to
    `uploads/<key>.flac` in the bucket, a `tracks` row and an audio `posts` row are written
    (examples/integrity_schema.sql) and two jobs are enqueued (examples/schema.sql, table `jobs`):
    one in queue `stem-separation`, one in queue `audio-analysis`;
  - runs the jobs on a pool of workers per queue (`waiting` -> `running` -> `succeeded`),
    autoscaled with the backlog, at a realistic pace: a separation takes 6-14 s and uploads
    four stems to `stems/<track>/<stem>.wav`; an analysis takes 2-5 s and writes its result
    into `audio_events_cache` (a timeline, the processing time, and the track's peak level and
    integrated loudness: about -14 LUFS, peaks mostly -6 to -2 dBFS, one hot master in 50
    peaking near full scale);
  - fails a few jobs on purpose, deterministically (no flaky demo): every 80th separation and
    every 150th analysis (whose result has no timeline), and cancels every 60th separation
    while it waits (the user deleted the track).
When the bucket does not answer, a separation cannot upload its stems: the job goes to
`retrying` with a backoff (5 s, 10 s, 20 s ...), as a real queue library does, and uploads of new
tracks are spooled and retried, so the queues keep moving.

Faults are switched on and off from the outside (`set_workers`, `poison_batch`, `rerun`,
`break_playlist` / `restore_playlist`); the storage outage is the S3 endpoint itself going away.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass

import boto3
import psycopg
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from psycopg.types.json import Jsonb

log = logging.getLogger("demo.simulator")

TICK = 1.0
TRACKS_PER_SECOND = 0.5
STEMS = "stem-separation"
ANALYSIS = "audio-analysis"
# The stage each queue's jobs run, in the product guide's words (examples/pipemon.yaml reads it).
STAGE_OF = {STEMS: "PREPARATION", ANALYSIS: "ANALYSIS"}
WORKERS = {STEMS: 8, ANALYSIS: 4}  # per queue, when nothing waits
MAX_WORKERS = {STEMS: 24, ANALYSIS: 12}  # the autoscaler adds a worker per 4 jobs ready to run
RUN_SECONDS = {STEMS: (6.0, 14.0), ANALYSIS: (2.0, 5.0)}
FAIL_EVERY = {STEMS: 80, ANALYSIS: 150}
CANCEL_EVERY = 60  # separations cancelled while they wait
MAX_ATTEMPTS = 8
STEM_NAMES = ("vocals", "drums", "bass", "other")
SPOOL_RETRIES_PER_TICK = 5
# Audio levels of a successful analysis (as the backtest simulates them, pipemon.backtest.simulate):
# loudness around the -14 LUFS target, a peak 9.5 dB above it, a hot master now and then.
LOUDNESS_LUFS = (-14.0, 1.2)
PEAK_ABOVE_LOUDNESS = (9.5, 0.8)
HOT_MASTERS = 0.02

# The integrity tables' starting content: every audio post has its track, every playlist entry
# points at a track that exists.
SEED = """
INSERT INTO tracks (title) SELECT 'Catalogue track ' || g FROM generate_series(1, 200) g;
INSERT INTO posts (post_type, track_id, body)
  SELECT 'audio', g, 'listen to this' FROM generate_series(1, 200) g;
INSERT INTO posts (post_type, body) SELECT 'text', 'news ' || g FROM generate_series(1, 50) g;
INSERT INTO playlist_entries (playlist_id, track_id, position)
  SELECT g % 20 + 1, (g * 7) % 200 + 1, g FROM generate_series(1, 400) g;
"""


def s3_client(endpoint: str):
    """A client that fails fast: the pipeline retries on its own schedule."""
    config = BotoConfig(region_name="auto", signature_version="s3v4",
                        s3={"addressing_style": "path"}, connect_timeout=1, read_timeout=3,
                        retries={"total_max_attempts": 1},
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", endpoint_url=endpoint,
                                          aws_access_key_id="demo",
                                          aws_secret_access_key="demo", config=config)


@dataclass
class Running:
    """A job a worker is busy with."""

    id: int
    queue: str
    track: int
    started: float  # monotonic
    finish_at: float
    attempts: int
    poison: bool = False  # a corrupt file: the analysis crashes
    fails: bool = False  # one of the deterministic baseline failures


class Pipeline:
    def __init__(self, dsn: str, s3_endpoint: str, bucket: str, seed: int = 10):
        self.conn = psycopg.connect(dsn, autocommit=True,
                                    application_name="pipemon-demo-pipeline")
        self.s3 = s3_client(s3_endpoint)
        self.bucket = bucket
        self.rng = random.Random(seed)
        self.audio_rng = random.Random(seed + 1)  # levels do not move the other draws
        self.lock = threading.Lock()
        self.workers = dict(WORKERS)
        self.running: dict[int, Running] = {}
        self.spool: deque[str] = deque(maxlen=1000)
        self.picked = Counter()  # queue -> jobs started (for the deterministic failures)
        self.enqueued = Counter()
        self.to_cancel: list[tuple[float, int]] = []  # (monotonic due, job id)
        # (queue, outcome) -> jobs finished since count_from() (what the exporter counts)
        self.finished = Counter()
        self.uploads = Counter()  # "ok" / "failed" puts
        self.removed_track: tuple | None = None
        self._next_arrival = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pipeline", daemon=True)
        self.error: BaseException | None = None

    # --- lifecycle ---

    def seed(self) -> None:
        self.conn.execute(SEED)

    def start(self) -> Pipeline:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(Exception):
            self.s3.close()

    def count_from_now(self) -> None:
        """Forget the finished-job counts: the exporter starts counting at its start too."""
        with self.lock:
            self.finished.clear()

    def _loop(self) -> None:
        while not self._stop.wait(TICK):
            try:
                with self.lock:
                    self._tick()
            except Exception as exc:  # keep going: a tick may meet a database restart
                if self._stop.is_set():
                    return
                self.error = exc
                log.warning("pipeline tick failed: %s", exc)

    # --- faults and heals (called from the orchestrator's thread) ---

    def set_workers(self, queue: str, count: int) -> None:
        """Set the base size of a worker pool; at 0 the busy workers finish their job and none
        starts (the autoscaler does not scale up from zero)."""
        with self.lock:
            self.workers[queue] = count

    def poison_batch(self, count: int) -> None:
        """A customer uploads an album of corrupt files: their analyses crash within a second."""
        with self.lock, self.conn.transaction():
            for _ in range(count):
                track = self._new_track(upload=False)
                self._enqueue(ANALYSIS, track, poison=True)

    def rerun(self, target_ratio: float = 0.02) -> int:
        """After the fix, the failed tracks and the backlog are re-analysed on extra workers:
        as many quick successful analyses as it takes to bring the failure ratio of the jobs
        counted so far under `target_ratio`. Returns how many."""
        with self.lock:
            failed = self.finished[(ANALYSIS, "failed")]
            completed = failed + self.finished[(ANALYSIS, "succeeded")]
            count = max(100, math.ceil(failed / target_ratio) - completed)
            with self.conn.transaction():
                self.conn.execute(
                    """
                    WITH t AS (
                      INSERT INTO tracks (title)
                      SELECT 'Re-analysed track ' || g FROM generate_series(1, %(n)s) g
                      RETURNING id
                    ), j AS (
                      INSERT INTO jobs (queue, status, created_at, run_at, started_at,
                                        finished_at, attempts, payload)
                      SELECT %(queue)s, 'succeeded', now() - interval '30 s',
                             now() - interval '30 s',
                             now() - make_interval(secs => 2 + id %% 3),
                             now() - make_interval(secs => (id %% 4) * 0.25), 1,
                             jsonb_build_object('track_id', id, 'rerun', true)
                      FROM t
                      RETURNING (payload->>'track_id')::bigint AS track_id
                    )
                    INSERT INTO audio_events_cache (track_id, timeline, processing_ms, peak_dbfs,
                                                    loudness_lufs)
                    SELECT track_id, '[{"t": 0.0, "event": "onset"}]', 1800 + track_id %% 900,
                           -4.5 - (track_id %% 4) * 0.5, -14.5 + (track_id %% 3) * 0.5
                    FROM j
                    """, {"n": count, "queue": ANALYSIS})
            self.finished[(ANALYSIS, "succeeded")] += count
        return count

    def break_playlist(self) -> tuple[int, int]:
        """A clean-up script hard-deletes a catalogue track that playlists still point at.
        Returns (track id, playlist entries left pointing at nothing)."""
        with self.lock, self.conn.transaction():
            track, entries = self.conn.execute(
                "SELECT track_id, count(*) FROM playlist_entries GROUP BY track_id"
                " ORDER BY count(*) DESC, track_id LIMIT 1").fetchone()
            self.removed_track = self.conn.execute(
                "DELETE FROM tracks WHERE id = %s RETURNING id, title, created_at",
                (track,)).fetchone()
        return track, entries

    def restore_playlist(self) -> None:
        """The deleted track is restored from the backup."""
        with self.lock:
            if self.removed_track is not None:
                self.conn.execute("INSERT INTO tracks (id, title, created_at)"
                                  " VALUES (%s, %s, %s)", self.removed_track)
                self.removed_track = None

    def status(self) -> str:
        """One line: active jobs per queue and state, finished jobs, objects uploaded."""
        with self.lock:
            rows = self.conn.execute(
                "SELECT queue, status, count(*) FROM jobs"
                " WHERE status IN ('waiting', 'running', 'retrying') GROUP BY 1, 2").fetchall()
            active = {(q, s): n for q, s, n in rows}
            parts = []
            for queue in (STEMS, ANALYSIS):
                states = " ".join(f"{active.get((queue, s), 0)} {s}"
                                  for s in ("waiting", "running", "retrying"))
                done = self.finished[(queue, "succeeded")]
                failed = self.finished[(queue, "failed")]
                parts.append(f"{queue}: {states}, {done} done, {failed} failed")
            parts.append(f"{self.uploads['ok']} objects uploaded")
            return " | ".join(parts)

    # --- one tick ---

    def _tick(self) -> None:
        now = time.monotonic()
        arrivals = 0
        while self._next_arrival <= now:
            arrivals += 1
            self._next_arrival += self.rng.expovariate(TRACKS_PER_SECOND)
        keys = [f"uploads/{uuid.uuid4().hex}.flac" for _ in range(arrivals)]
        for key in keys:
            if not self._put(key, 2048):
                self.spool.append(key)  # the upload service keeps it and retries
        for _ in range(min(SPOOL_RETRIES_PER_TICK, len(self.spool))):
            key = self.spool.popleft()
            if not self._put(key, 2048):
                self.spool.appendleft(key)
                break

        # Jobs whose work is done: a separation still has to upload its stems.
        done = [job for job in self.running.values() if job.finish_at <= now]
        outcomes: dict[int, str] = {}
        for job in done:
            if job.poison or job.fails:
                outcomes[job.id] = "failed"
            elif job.queue == STEMS:
                ok = all(self._put(f"stems/{job.track}/{stem}.wav", 4096) for stem in STEM_NAMES)
                if ok:
                    outcomes[job.id] = "succeeded"
                else:
                    outcomes[job.id] = "failed" if job.attempts >= MAX_ATTEMPTS else "retrying"
            else:
                outcomes[job.id] = "succeeded"

        with self.conn.transaction():
            for key in keys:
                track = self._new_track(upload=key)
                self._enqueue(STEMS, track)
                self._enqueue(ANALYSIS, track)
            self._cancel_due(now)
            for job in done:
                self._finish(job, outcomes[job.id])
                del self.running[job.id]
            for queue in (STEMS, ANALYSIS):
                self._pick(queue, now)

    def _put(self, key: str, size: int) -> bool:
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=self.rng.randbytes(size))
        except (BotoCoreError, ClientError):
            self.uploads["failed"] += 1
            return False
        self.uploads["ok"] += 1
        return True

    def _new_track(self, upload: str | bool) -> int:
        track = self.conn.execute(
            "INSERT INTO tracks (title) VALUES (%s) RETURNING id",
            (f"Upload {upload if upload else 'batch'}",)).fetchone()[0]
        self.conn.execute("INSERT INTO posts (post_type, track_id, body) VALUES"
                          " ('audio', %s, 'new track')", (track,))
        return track

    def _enqueue(self, queue: str, track: int, poison: bool = False) -> None:
        payload = {"track_id": track}
        if poison:
            payload["poison"] = True
        job = self.conn.execute(
            "INSERT INTO jobs (queue, payload, stage) VALUES (%s, %s, %s) RETURNING id",
            (queue, Jsonb(payload), STAGE_OF[queue])).fetchone()[0]
        self.enqueued[queue] += 1
        if queue == STEMS and not poison and self.enqueued[queue] % CANCEL_EVERY == 0:
            self.to_cancel.append((time.monotonic() + 2.0, job))

    def _cancel_due(self, now: float) -> None:
        due = [job for at, job in self.to_cancel if at <= now]
        self.to_cancel = [(at, job) for at, job in self.to_cancel if at > now]
        for job in due:
            cur = self.conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = now()"
                                    " WHERE id = %s AND status = 'waiting'", (job,))
            if cur.rowcount:
                self.finished[(STEMS, "cancelled")] += 1

    def _finish(self, job: Running, outcome: str) -> None:
        if outcome == "retrying":
            backoff = min(60, 5 * 2 ** (job.attempts - 1))
            self.conn.execute("UPDATE jobs SET status = 'retrying',"
                              " run_at = now() + make_interval(secs => %s) WHERE id = %s",
                              (backoff, job.id))
            return
        self.conn.execute("UPDATE jobs SET status = %s, finished_at = now(), error = %s"
                          " WHERE id = %s", (outcome, _error_of(job, outcome), job.id))
        self.finished[(job.queue, outcome)] += 1
        if job.queue == ANALYSIS and not job.poison:
            # the analysis result; a failed analysis leaves a row without a timeline or levels
            timeline = peak = loudness = None
            if outcome == "succeeded":
                timeline = Jsonb([{"t": round(self.rng.uniform(0, 180), 2), "event": event}
                                  for event in ("onset", "drop", "chorus")])
                peak, loudness = self._levels()
            processing_ms = int((job.finish_at - job.started) * 1000)
            self.conn.execute("INSERT INTO audio_events_cache (track_id, timeline,"
                              " processing_ms, peak_dbfs, loudness_lufs)"
                              " VALUES (%s, %s, %s, %s, %s)",
                              (job.track, timeline, processing_ms, peak, loudness))

    def _levels(self) -> tuple[float, float]:
        """(peak dBFS, integrated loudness LUFS) of an analysed track."""
        loudness = self.audio_rng.gauss(*LOUDNESS_LUFS)
        peak = loudness + self.audio_rng.gauss(*PEAK_ABOVE_LOUDNESS)
        if self.audio_rng.random() < HOT_MASTERS:
            peak = self.audio_rng.uniform(-1.0, 0.0)
        return round(min(peak, 0.0), 2), round(loudness, 2)

    def _pick(self, queue: str, now: float) -> None:
        busy = sum(1 for job in self.running.values() if job.queue == queue)
        workers = self.workers[queue]
        if workers:
            ready = self.conn.execute(
                "SELECT count(*) FROM jobs WHERE queue = %s AND status IN ('waiting', 'retrying')"
                " AND run_at <= now()", (queue,)).fetchone()[0]
            workers = min(MAX_WORKERS[queue], workers + ready // 4)
        free = workers - busy
        if free <= 0:
            return
        rows = self.conn.execute(
            """
            WITH picked AS (
              SELECT id FROM jobs
              WHERE queue = %s AND status IN ('waiting', 'retrying') AND run_at <= now()
              ORDER BY run_at, id LIMIT %s FOR UPDATE SKIP LOCKED
            )
            UPDATE jobs j SET status = 'running', started_at = now(), attempts = attempts + 1
            FROM picked WHERE j.id = picked.id
            RETURNING j.id, j.payload, j.attempts
            """, (queue, free)).fetchall()
        for job_id, payload, attempts in sorted(rows):
            poison = bool(payload.get("poison"))
            if poison:
                seconds = self.rng.uniform(0.5, 1.5)
            else:
                seconds = self.rng.uniform(*RUN_SECONDS[queue])
            fails = False
            if not poison and attempts == 1:
                self.picked[queue] += 1
                fails = self.picked[queue] % FAIL_EVERY[queue] == 0
            self.running[job_id] = Running(job_id, queue, int(payload["track_id"]), now,
                                           now + seconds, attempts, poison, fails)


def _error_of(job, outcome: str) -> str | None:
    """The error code a failed job leaves, as the video guide's pipeline does (it triages by
    them: examples/pipemon.yaml reads them as failure reasons)."""
    if outcome != "failed":
        return None
    if job.poison:
        return "VALIDATION_FAILED: corrupt upload"
    if job.queue == STEMS and not job.fails:
        return "STORAGE_UPLOAD_FAILED after 3 attempts"
    return "FFMPEG_FAILED: exit code 1"
