"""/metrics bodies: rendered once per change of the data, in every format a scraper asks for."""

from __future__ import annotations

import gzip
import threading

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from pipemon.exposition import Exposition
from testkit.net import wait_until

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


class Jobs:
    """A collector whose value the test sets, counting how often it is collected."""

    def __init__(self) -> None:
        self.value = 1.0
        self.collections = 0
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def collect(self):
        self.collections += 1
        self.started.set()
        self.release.wait(10)
        family = GaugeMetricFamily("pipemon_queue_jobs", "Jobs.", labels=["state"])
        family.add_metric(["waiting"], self.value)
        yield family


def exposition() -> tuple[Exposition, Jobs]:
    registry, jobs = CollectorRegistry(), Jobs()
    registry.register(jobs)
    return Exposition(registry), jobs


def test_scrapes_between_changes_reuse_one_rendering():
    cache, jobs = exposition()
    bodies = {cache.body(None, None)[2] for _ in range(50)}
    assert bodies == {b'# HELP pipemon_queue_jobs Jobs.\n# TYPE pipemon_queue_jobs gauge\n'
                      b'pipemon_queue_jobs{state="waiting"} 1.0\n'}
    assert jobs.collections == 1


def test_each_format_is_rendered_once_per_change_by_its_next_scrape():
    cache, jobs = exposition()
    cache.body(None, None)
    cache.body(OPENMETRICS, "gzip")
    jobs.value = 7
    cache.invalidate()  # what a finished poll does
    assert jobs.collections == 2, "formats scraped once per change are rendered when scraped"
    for _ in range(3):
        content_type, gzipped, body = cache.body(OPENMETRICS, "gzip")
        assert content_type.startswith("application/openmetrics-text") and gzipped
        text = gzip.decompress(body).decode()
        assert 'pipemon_queue_jobs{state="waiting"} 7.0\n' in text and text.endswith("# EOF\n")
        assert b'pipemon_queue_jobs{state="waiting"} 7.0\n' in cache.body(None, None)[2]
    assert jobs.collections == 4


def test_formats_scraped_more_often_than_changes_are_rendered_ahead():
    cache, jobs = exposition()
    cache.body(OPENMETRICS, "gzip")
    cache.body(OPENMETRICS, "gzip")  # a second scraper, or a faster one
    cache.body(None, None)
    jobs.value = 5
    cache.invalidate()
    assert jobs.collections == 3, "the busy format rendered by the invalidating thread"
    assert b"} 5.0\n" in gzip.decompress(cache.body(OPENMETRICS, "gzip")[2])
    assert jobs.collections == 3
    cache.invalidate()  # its body rendered ahead was used: render ahead again
    assert jobs.collections == 4
    cache.invalidate()  # nobody scraped since: back to rendering on the next scrape
    assert jobs.collections == 4


def test_scrapes_during_a_rendering_get_the_previous_body_without_waiting():
    cache, jobs = exposition()
    before = cache.body(None, None)[2]
    jobs.value, jobs.started = 2, threading.Event()
    jobs.release.clear()
    cache.invalidate()
    renderer = threading.Thread(target=cache.body, args=(None, None))
    renderer.start()
    try:
        wait_until(jobs.started.is_set, 5, "the rendering after the change to start")
        assert cache.body(None, None)[2] == before
    finally:
        jobs.release.set()
        renderer.join(10)
    assert b"} 2.0\n" in cache.body(None, None)[2]
    assert jobs.collections == 2


def test_first_scrape_of_a_format_waits_for_its_rendering():
    cache, jobs = exposition()
    jobs.release.clear()
    results = []
    scrapers = [threading.Thread(target=lambda: results.append(cache.body(None, "gzip")[2]))
                for _ in range(3)]
    for scraper in scrapers:
        scraper.start()
    wait_until(jobs.started.is_set, 5, "the first rendering to start")
    jobs.release.set()
    for scraper in scrapers:
        scraper.join(10)
    assert len(results) == 3 and len(set(results)) == 1
    assert b"} 1.0\n" in gzip.decompress(results[0])
    assert jobs.collections == 1, "the three scrapers shared one rendering"
