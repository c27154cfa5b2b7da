"""Prometheus metrics of one serving process, in a registry of its own.

The registry is built when serving starts, never at import time, so spawned workers that import
this module build nothing, and two apps in one process never share or collide on metric names.
Counters count from the server's start; gauges are read from the runtime at each scrape.
"""

from __future__ import annotations

from collections import Counter as Tally
import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .runtime import Runtime

ACTIVE_STATES = ("queued", "running")
# The text format that generate_latest writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; jobs range from milliseconds (a small hash) to the default one-hour time limit.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, float("inf"))
# Seconds; fine below 10 ms, where a responsive loop's lag lies, so a p99 can be read from the buckets.
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
               float("inf"))


class Metrics:
    """Counters updated as jobs end and uploads are stored, plus gauges read from the runtime."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs_finished = Counter("offload_jobs_finished", "Jobs that reached a final state",
                                     ["kind", "state"], registry=self.registry)
        self.job_duration = Histogram("offload_job_duration_seconds",
                                      "Run time of jobs that started, from start to final state",
                                      ["kind"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.upload_bytes = Counter("offload_upload_bytes", "Bytes of uploaded files stored",
                                    registry=self.registry)
        self.uploaded_files = Counter("offload_uploaded_files", "Uploaded files stored",
                                      registry=self.registry)

    async def sample_loop_lag(self, interval_s: float) -> None:
        """Sleep ``interval_s`` seconds at a time and record how late each wake-up is, until cancelled.

        The histogram exists only while a sampler runs (setting ``loop_lag_interval_s``), so a
        server without it exports no lag series.
        """
        lag = Histogram("offload_event_loop_lag_seconds",
                        "How late the event loop ran a timer, sampled every loop_lag_interval_s seconds",
                        buckets=LAG_BUCKETS, registry=self.registry)
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            lag.observe(max(loop.time() - expected, 0.0))

    def watch(self, runtime: Runtime) -> None:
        """Report the runtime's queue, workers, sessions and stream subscribers at each scrape."""
        self.registry.register(RuntimeCollector(runtime))

    def job_finished(self, kind: str, state: str, run_seconds: float | None) -> None:
        self.jobs_finished.labels(kind, state).inc()
        if run_seconds is not None:
            self.job_duration.labels(kind).observe(max(run_seconds, 0.0))

    def upload_stored(self, size: int) -> None:
        self.upload_bytes.inc(size)
        self.uploaded_files.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RuntimeCollector(Collector):
    """Gauges read from the runtime when scraped; parts not started yet are left out."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self._runtime
        yield _gauge("offload_ready", "1 when the server accepts requests, else 0", int(runtime.ready))
        yield _gauge("offload_stream_subscribers", "Open websocket and event-stream subscriptions",
                     runtime.hub.subscriber_count)
        if runtime.store is not None:
            yield _gauge("offload_sessions", "Sessions that have not expired", len(runtime.store.sessions))
        if runtime.pool is not None:
            pool = runtime.pool
            yield _gauge("offload_workers", "Worker processes in the pool", pool.size)
            busy = sum(1 for worker in pool.workers if worker.job_id is not None)
            yield _gauge("offload_workers_busy", "Workers running a job", busy)
            restarts = CounterMetricFamily("offload_worker_restarts", "Workers replaced after they ended")
            restarts.add_metric([], pool.restarts)
            yield restarts
        if runtime.jobs is not None and runtime.store is not None:
            yield _gauge("offload_queue_depth", "Jobs waiting for a worker", runtime.jobs.queued_count)
            yield self._active_jobs(runtime)

    def _active_jobs(self, runtime: Runtime) -> Metric:
        assert runtime.jobs is not None
        family = GaugeMetricFamily("offload_jobs", "Queued and running jobs", labels=["kind", "state"])
        counts = Tally((job["kind"], job["state"]) for job in runtime.jobs.active_records())
        # Every kind gets both series, also at 0, so a series never vanishes between scrapes.
        for kind in sorted(runtime.kinds):
            for state in ACTIVE_STATES:
                family.add_metric([kind, state], counts[kind, state])
        return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
