"""/metrics bodies rendered once per change of the data, not once per scrape.

Every family is built from the sources' latest poll results, so the exposition only changes when
a poll finishes or the config is reloaded. Rendering 1,000 series took 15-20 ms of CPU under the
GIL with prometheus_client's encoders (about 3 ms with `encoders.py`, plus 0.3 ms of gzip);
doing it for every request made /metrics slow for every extra scraper (an HA Prometheus pair, a
federation, a curl; bench/README.md). Here each format is rendered at most once per change, and
only when scraped:
- a format scraped more often than the data changes (its last body was served to a scrape
  that did not render it) is rendered again right after the change, on the poll's thread, so
  no scrape waits for it;
- any other format is rendered by its next scrape, so a single Prometheus scraping less often
  than the sources poll costs no more CPU than rendering per scrape did.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import CollectorRegistry

from pipemon import encoders

log = logging.getLogger(__name__)

GZIP_LEVEL = 1  # 1,700 series: 0.33 ms and 6.9 KB, against 1.2 ms and 6.0 KB at 6 (issue 19)


@dataclass
class _Variant:
    encoder: encoders.Encoder
    gzipped: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    body: bytes | None = None
    generation: int = -1
    reused: bool = False  # served to a scrape that did not render it: render it ahead


class Exposition:
    """The rendered bodies, one per (content type, gzip) pair a scraper has asked for."""

    def __init__(self, registry: CollectorRegistry):
        self._registry = registry
        self._generation = 0
        self._variants: dict[tuple[str, bool], _Variant] = {}
        self._lock = threading.Lock()  # guards the two fields above

    def invalidate(self) -> None:
        """The data changed: render the busy formats now, the others when next scraped."""
        with self._lock:
            self._generation += 1
            busy = [variant for variant in self._variants.values() if variant.reused]
        for variant in busy:
            try:
                self._render(variant, wait=True)
            except Exception:  # on a poll's thread: the loop must go on; the scrape will fail
                log.exception("rendering /metrics ahead of the scrapes failed")

    def body(self, accept: str | None, accept_encoding: str | None) -> tuple[str, bool, bytes]:
        """(content type, gzipped, body) for a scrape with these headers."""
        content_type, encoder = encoders.choose(accept or "")
        if encoder is None:  # a scheme that rewrites names: prometheus_client renders it
            client_encoder, content_type = choose_encoder(accept or "")
            encoder = _from_registry(client_encoder)
        gzipped = gzip_accepted(accept_encoding or "")
        with self._lock:
            variant = self._variants.get((content_type, gzipped))
            if variant is None:
                variant = self._variants[(content_type, gzipped)] = _Variant(encoder, gzipped)
        if variant.generation != self._generation:
            # While another scrape renders, the previous body is as good as it was a moment ago.
            self._render(variant, wait=variant.body is None)
        else:
            variant.reused = True
        return content_type, gzipped, variant.body

    def _render(self, variant: _Variant, wait: bool) -> None:
        if not variant.lock.acquire(blocking=wait):
            return
        try:
            generation = self._generation  # read first: a change during rendering stays pending
            if variant.generation == generation:
                return  # another scrape rendered it while this one waited
            body = variant.encoder(self._registry.collect())
            if variant.gzipped:
                body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            variant.body, variant.generation, variant.reused = body, generation, False
        finally:
            variant.lock.release()


def _from_registry(client_encoder: Callable[[CollectorRegistry], bytes]) -> encoders.Encoder:
    """prometheus_client's encoder, given families as pipemon's are."""
    def encode(families) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collected(list(families)))
        return client_encoder(registry)
    return encode


class _Collected:
    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families
