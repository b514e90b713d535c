"""`kind: storage`: an S3-compatible bucket (Cloudflare R2 by default), probed and counted.

Each poll runs a probe: put a small random object under `probe_prefix` with a unique key, get it
back and compare its SHA-256, delete it (read-only mode: head the bucket and list the probe
prefix instead). Every poll also runs the inventory when it is due (its own, slower interval):
objects and bytes under each configured prefix, at most `max_pages` list pages per prefix.

A failed probe is a measurement, not a failed poll: `pipemon_storage_probe_success` is 0 and
`pipemon_storage_probe_failures_total{operation,reason}` says why, while `pipemon_source_up`
stays 1. Were an unreachable endpoint a failed poll, the success gauge would vanish exactly when
storage is down, and the probe-failing alert and the storage availability SLO (both read that
gauge) would miss the worst outage. The poll itself fails only on a bug (`internal`).

The probe's calls (and the inventory's) share the poll's deadline, as a blackbox_exporter probe
shares its context: a call still running at the deadline counts as a `timeout` and is left to
end by its own connect and read timeouts off the poll's thread, so the poll ends on time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import urlsplit

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    FlexibleChecksumError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from pipemon import metrics as m
from pipemon.errors import redact
from pipemon.schema import (
    Checked,
    Node,
    boolean,
    described,
    one_of,
    positive_duration,
    positive_int,
    secret,
    section,
    string,
    string_list,
    value,
)
from pipemon.secret import Secret
from pipemon.sources.base import Source, SourceConfig
from pipemon.verdict import CRITICAL, Finding

log = logging.getLogger(__name__)

WRITE_OPERATIONS = ("put", "get", "delete")
READ_ONLY_OPERATIONS = ("head", "list")
REASONS = ("timeout", "connect", "auth", "not_found", "throttled", "checksum", "server_error",
           "client_error")
INVENTORY_REASONS = tuple(r for r in REASONS if r != "checksum")
PROBE_BYTES = 1024
CREDENTIAL_KEYS = ("access_key_id", "secret_access_key")
MAX_LEFTOVERS = 100  # probe keys whose delete did not happen, retried after a good probe
CLEANUPS_PER_POLL = 10
# A put that timed out may still land later (held by a slow endpoint or a proxy), after the
# cleanup deleted its key: delete it again after each good probe for this long.
LATE_WRITE_SECONDS = 120.0
# S3 calls left running past the poll's deadline end by their own timeouts; a few may overlap.
CALL_THREADS = 2

AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
              "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "Unauthorized",
              "401", "403"}
NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
THROTTLED_CODES = {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
                   "RequestLimitExceeded", "RequestThrottled", "429"}
TIMEOUT_CODES = {"RequestTimeout", "RequestTimeoutException"}


# --- config ---


@described("http:// or https:// URL")
def endpoint(value) -> str:
    text = string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text


@described("integer 1-1000")
def page_size(value) -> int:
    number = positive_int(value)
    if number > 1000:
        raise ValueError(f"S3 returns at most 1000 keys per page, got {number}")
    return number


@dataclass(frozen=True, kw_only=True)
class InventoryConfig(Checked):
    prefixes: tuple[str, ...] = value("Key prefixes to count objects and bytes under.",
                                      string_list)
    interval: float = value("How often the inventory runs (in the poll that comes due).",
                            positive_duration, 600.0)
    max_pages: int = value("List pages per prefix at most; past it the counts are lower bounds.",
                           positive_int, 100)
    page_size: int = value("Keys per list page.", page_size, 1000)


@dataclass(frozen=True, kw_only=True)
class StorageConfig(SourceConfig):
    bucket: str = value("The bucket to probe.")
    endpoint_url: str | None = value(
        "S3 endpoint, e.g. `https://<account>.r2.cloudflarestorage.com` (none: AWS).",
        endpoint, None)
    region: str = value("Signing region (R2: `auto`).", string, "auto")
    addressing_style: str = value("Bucket in the path or in the host name.",
                                  one_of("path", "virtual", "auto"), "path")
    access_key_id: Secret | None = secret(
        "Access key id; leave out both keys for boto3's default credential chain.", required=False)
    secret_access_key: Secret | None = secret(
        "Secret access key.", required=False)
    session_token: Secret | None = secret(
        "Session token of temporary credentials.", required=False)
    probe_prefix: str = value("Key prefix of the probe objects.", string, "pipemon-probe/")
    read_only: bool = value("Probe with head bucket and list instead of put/get/delete.",
                            boolean, False)
    max_attempts: int = value("Attempts per S3 call, each with `timeout / max_attempts`.",
                              positive_int, 2)
    inventory: InventoryConfig | None = section(
        InventoryConfig, "Count objects and bytes under prefixes (none: no inventory).")

    def check(self, node: Node, parent: dict) -> None:
        super().check(node, parent)
        given = [node.has(key) or node.has(f"{key}_file") for key in CREDENTIAL_KEYS]
        if given[0] != given[1]:
            node.problem(CREDENTIAL_KEYS[given.index(False)],
                         "required when the other key is set (or set neither: boto3's default"
                         " credential chain is then used)")

    def secrets(self) -> list[str]:
        found = (self.access_key_id, self.secret_access_key, self.session_token)
        return [s.reveal() for s in found if s is not None]

    @property
    def operations(self) -> tuple[str, ...]:
        return READ_ONLY_OPERATIONS if self.read_only else WRITE_OPERATIONS


# --- errors ---


class ChecksumMismatch(Exception):
    """The object read back is not the object written."""


class DeadlinePassed(Exception):
    """The poll's deadline came before the S3 call ended (or could start)."""


# What a failed S3 call raises. Anything else is a bug: it fails the poll as `internal`.
S3_ERRORS = (BotoCoreError, ClientError)


def classify(exc: BaseException) -> str:
    """A short reason label for an S3 call that failed."""
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError | DeadlinePassed):
        return "timeout"
    if isinstance(exc, EndpointConnectionError | BotoConnectionError | HTTPClientError |
                  ResponseStreamingError):
        return "connect"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return "auth"
    if isinstance(exc, ChecksumMismatch | FlexibleChecksumError):
        return "checksum"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in THROTTLED_CODES or status == 429:
            return "throttled"
        if code in TIMEOUT_CODES:
            return "timeout"
        if code in AUTH_CODES or status in (401, 403):
            return "auth"
        if code in NOT_FOUND_CODES or status == 404:
            return "not_found"
        if status >= 500:
            return "server_error"
    return "client_error"


# --- polling ---


@dataclass(frozen=True)
class PrefixCount:
    objects: int
    bytes: int
    truncated: bool


@dataclass(frozen=True)
class StorageSnapshot:
    probe_success: bool
    inventory: dict[str, PrefixCount]


@dataclass(frozen=True)
class ProbeFailure:
    operation: str
    reason: str
    message: str


class StorageSource(Source):
    config_type = StorageConfig
    specs = (m.STORAGE_PROBE_SUCCESS, m.STORAGE_PROBE_DURATION, m.STORAGE_PROBE_FAILURES,
             m.STORAGE_OBJECTS, m.STORAGE_BYTES, m.STORAGE_INVENTORY_TRUNCATED,
             m.STORAGE_INVENTORY_ERRORS)

    def __init__(self, config: StorageConfig):
        super().__init__(config)
        self.config: StorageConfig = config
        self._lock = threading.Lock()
        self._client = None
        self._calls: ThreadPoolExecutor | None = None  # made on first use, like the client
        self._failures = m.CounterSet()
        self._durations = m.HistogramSet(m.STORAGE_SECONDS_BUCKETS)
        for operation in config.operations:
            self._durations.ensure((operation,))
            for reason in REASONS:
                self._failures.ensure((operation, reason))
        self._inventory_errors = m.CounterSet()
        self._inventory: dict[str, PrefixCount] = {}
        self._inventory_due = 0.0  # monotonic time of the next inventory run
        if config.inventory:
            for reason in INVENTORY_REASONS:
                self._inventory_errors.ensure((reason,))
        self._leftovers: dict[str, float] = {}  # key -> when its probe failed (monotonic)
        self._deleted: set[str] = set()  # leftovers deleted once, deleted again until late
        self.last_failure: ProbeFailure | None = None
        # Made now, not in the first poll: loading botocore's service model takes a good part
        # of a second on a busy machine, which would eat the first poll's deadline.
        self.client()

    # --- the client ---

    def client(self):
        """One client per source (made again after close()); boto3 clients are thread-safe."""
        if self._client is None:
            cfg = self.config
            per_attempt = cfg.timeout / cfg.max_attempts  # a call with its retries ~ timeout
            boto_config = BotoConfig(
                region_name=cfg.region,
                signature_version="s3v4",
                s3={"addressing_style": cfg.addressing_style},
                connect_timeout=per_attempt,
                read_timeout=per_attempt,
                retries={"total_max_attempts": cfg.max_attempts, "mode": "standard"},
                # Checksums only where S3 requires them: several S3-compatible stores reject the
                # trailing checksums newer botocore sends by default. The probe checks SHA-256.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            # A session of our own: boto3's default session is not thread-safe.
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=cfg.endpoint_url,
                aws_access_key_id=_reveal(cfg.access_key_id),
                aws_secret_access_key=_reveal(cfg.secret_access_key),
                aws_session_token=_reveal(cfg.session_token),
                config=boto_config,
            )
        return self._client

    def _within(self, deadline: float, call: Callable[[], object]) -> object:
        """Run one S3 call, waiting for it until `deadline` at most. A call still running
        then is left to end by its own timeouts (connect and read, per attempt), off the
        poll: the poll ends on time, and the call counts as a timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlinePassed("the poll's deadline passed before the call could start")
        if self._calls is None:
            self._calls = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix=f"s3-{self.name}")
        future = self._calls.submit(call)
        try:
            return future.result(timeout=remaining)
        except FutureTimeout:
            raise DeadlinePassed("no answer by the poll's deadline") from None

    # --- the probe ---

    def poll(self, deadline: float) -> StorageSnapshot:
        client = self.client()
        if self.config.read_only:
            ok = self._probe_read_only(client, deadline)
        else:
            ok = self._probe(client, deadline)
        if ok and self._leftovers:
            self._clean_up(client, deadline)
        if self.config.inventory and self._inventory_due <= time.monotonic() < deadline:
            self._run_inventory(client, deadline)  # else at the next poll with time left
        with self._lock:
            return StorageSnapshot(ok, dict(self._inventory))

    def _step(self, operation: str, deadline: float, call: Callable[[], object]) -> bool:
        """Run one probe operation: its duration when it succeeds, its reason when it fails."""
        started = time.monotonic()
        try:
            self._within(deadline, call)
        except (*S3_ERRORS, ChecksumMismatch, DeadlinePassed) as exc:
            reason = classify(exc)
            message = redact(f"{operation}: {exc}", self.config.secrets())
            with self._lock:
                self._failures.inc((operation, reason))
                self.last_failure = ProbeFailure(operation, reason, message)
            log.warning("source %s: storage probe failed (%s): %s", self.name, reason, message,
                        extra={"source": self.name, "reason": reason, "operation": operation})
            return False
        with self._lock:
            self._durations.observe((operation,), time.monotonic() - started)
        return True

    def _probe(self, client, deadline: float) -> bool:
        bucket = self.config.bucket
        key = f"{self.config.probe_prefix}{uuid.uuid4().hex}"
        body = os.urandom(PROBE_BYTES)
        digest = hashlib.sha256(body).digest()

        def get_and_verify() -> None:
            response = client.get_object(Bucket=bucket, Key=key)
            with response["Body"] as stream:
                if hashlib.sha256(stream.read()).digest() != digest:
                    raise ChecksumMismatch("the object read back differs from the one written")

        put = self._step("put", deadline,
                         lambda: client.put_object(Bucket=bucket, Key=key, Body=body))
        if not put:
            # The put may have landed even though its answer did not (a read timeout): delete
            # the key later, once the endpoint answers again. A refused connection sent nothing.
            if self.last_failure.reason != "connect":
                self._remember_leftover(key)
            return False
        got = self._step("get", deadline, get_and_verify)
        if not got and time.monotonic() >= deadline:
            # The probe has failed and the deadline leaves no time to delete: the cleanup
            # after the next good probe will (a delete that could not run is not measured).
            self._remember_leftover(key)
            return False
        # Delete even when the get failed: no probe object is left behind.
        deleted = self._step("delete", deadline,
                             lambda: client.delete_object(Bucket=bucket, Key=key))
        if not deleted:
            self._remember_leftover(key)
        if got and deleted:
            self.last_failure = None
        return got and deleted

    def _probe_read_only(self, client, deadline: float) -> bool:
        bucket = self.config.bucket
        ok = self._step("head", deadline, lambda: client.head_bucket(Bucket=bucket)) and \
            self._step("list", deadline, lambda: client.list_objects_v2(
                Bucket=bucket, Prefix=self.config.probe_prefix, MaxKeys=1))
        if ok:
            self.last_failure = None
        return ok

    def _remember_leftover(self, key: str) -> None:
        self._leftovers[key] = time.monotonic()
        if len(self._leftovers) > MAX_LEFTOVERS:
            dropped = next(iter(self._leftovers))
            self._forget(dropped)
            if dropped not in self._deleted:
                log.warning("source %s: giving up deleting probe object %s (add a lifecycle"
                            " rule on %s)", self.name, dropped, self.config.probe_prefix)

    def _forget(self, key: str) -> None:
        del self._leftovers[key]
        self._deleted.discard(key)

    def _clean_up(self, client, deadline: float) -> None:
        """Delete probe objects a failed probe may have left (not measured: not a probe), the
        ones never deleted first."""
        now = time.monotonic()
        due = sorted(self._leftovers, key=lambda key: key in self._deleted)
        for key in due[:CLEANUPS_PER_POLL]:
            try:
                self._within(deadline, lambda key=key: client.delete_object(
                    Bucket=self.config.bucket, Key=key))
            except (*S3_ERRORS, DeadlinePassed) as exc:
                log.debug("source %s: cleanup of %s failed: %s", self.name, key, classify(exc))
                return
            self._deleted.add(key)
            if now - self._leftovers[key] >= LATE_WRITE_SECONDS:
                self._forget(key)

    # --- the inventory ---

    def _run_inventory(self, client, deadline: float) -> None:
        """Count every prefix; on the first error drop the counts and retry at the next poll.
        What the poll's deadline leaves no time for is counted at the next poll."""
        inv = self.config.inventory
        started = time.monotonic()
        counts: dict[str, PrefixCount] = {}
        try:
            for prefix in inv.prefixes:
                counts[prefix] = self._count(client, prefix, deadline)
        except S3_ERRORS as exc:
            reason = classify(exc)
            message = redact(str(exc), self.config.secrets())
            log.warning("source %s: storage inventory failed (%s): %s", self.name, reason,
                        message, extra={"source": self.name, "reason": reason})
            with self._lock:
                self._inventory_errors.inc((reason,))
                self._inventory = {}
            return
        for prefix, count in counts.items():
            if count.truncated:
                log.warning("source %s: inventory of %s stopped after %d objects (max_pages or"
                            " the poll's deadline): counts are lower bounds", self.name, prefix,
                            count.objects)
        with self._lock:
            self._inventory = counts
        self._inventory_due = started + inv.interval

    def _count(self, client, prefix: str, deadline: float) -> PrefixCount:
        inv = self.config.inventory
        objects = size = pages = 0
        request = {"Bucket": self.config.bucket, "Prefix": prefix, "MaxKeys": inv.page_size}
        while True:
            try:
                page = self._within(deadline, lambda: client.list_objects_v2(**request))
            except DeadlinePassed:
                return PrefixCount(objects, size, truncated=True)
            pages += 1
            for item in page.get("Contents", ()):
                objects += 1
                size += item.get("Size", 0)
            if not page.get("IsTruncated"):
                return PrefixCount(objects, size, truncated=False)
            if pages >= inv.max_pages:
                return PrefixCount(objects, size, truncated=True)
            request["ContinuationToken"] = page["NextContinuationToken"]

    # --- exposition ---

    def collect(self, families: m.Families, snapshot: StorageSnapshot | None) -> None:
        src = (self.name, self.config.bucket)
        if snapshot is not None:
            families(m.STORAGE_PROBE_SUCCESS).add_metric([*src], 1 if snapshot.probe_success else 0)
            for prefix, count in sorted(snapshot.inventory.items()):
                families(m.STORAGE_OBJECTS).add_metric([*src, prefix], count.objects)
                families(m.STORAGE_BYTES).add_metric([*src, prefix], count.bytes)
                families(m.STORAGE_INVENTORY_TRUNCATED).add_metric(
                    [*src, prefix], 1 if count.truncated else 0)
        with self._lock:
            self._durations.emit(families(m.STORAGE_PROBE_DURATION), src)
            self._failures.emit(families(m.STORAGE_PROBE_FAILURES), src)
            if self.config.inventory:
                self._inventory_errors.emit(families(m.STORAGE_INVENTORY_ERRORS), src)

    def findings(self, snapshot: StorageSnapshot) -> list[Finding]:
        failure = self.last_failure
        if snapshot.probe_success or failure is None:
            return []
        return [Finding(CRITICAL, f"storage probe failing: {failure.reason} on"
                                  f" {failure.operation}")]

    def failed_measurements(self, snapshot: StorageSnapshot) -> list[str]:
        failure = self.last_failure
        if snapshot.probe_success or failure is None:
            return []
        return [f"storage probe failed: {failure.reason}: {failure.message}"]

    def describe(self) -> dict:
        cfg = self.config
        where = urlsplit(cfg.endpoint_url).netloc if cfg.endpoint_url else "aws"
        failure = self.last_failure
        return {
            "target": f"{where}/{cfg.bucket}",
            "mode": "read-only" if cfg.read_only else "put/get/delete",
            "last_probe_failure": None if failure is None else {
                "operation": failure.operation, "reason": failure.reason,
                "message": failure.message},
        }

    def close(self) -> None:
        calls, self._calls = self._calls, None
        if calls is not None:
            calls.shutdown(wait=False, cancel_futures=True)
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _reveal(secret: Secret | None) -> str | None:
    return None if secret is None else secret.reveal()
