"""The /metrics endpoint: Prometheus text that counts the jobs and uploads a test ran."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.runtime import Runtime

from .conftest import DATA, Api


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of /metrics, keyed by sample name and sorted labels."""
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_count_jobs_and_uploads(server_factory: Any) -> None:
    server = server_factory()
    api = Api(server)
    paths = [DATA / "seattle-weather.csv", DATA / "zipcodes.csv"]
    files = [api.upload(path) for path in paths]
    hashes = [api.start("hash", [files[index % 2]["file_id"]]) for index in range(3)]
    failing = api.start("fail", [])
    for job in [*hashes, failing]:
        api.wait_job(job["job_id"])

    samples = scrape(server.url)
    assert samples["offload_jobs_finished_total", (("kind", "hash"), ("state", "succeeded"))] == 3
    assert samples["offload_jobs_finished_total", (("kind", "fail"), ("state", "failed"))] == 1
    assert [name for name, labels in samples if name == "offload_jobs_finished_total"] == [
        "offload_jobs_finished_total"] * 2
    assert samples["offload_job_duration_seconds_count", (("kind", "hash"),)] == 3
    assert samples["offload_job_duration_seconds_count", (("kind", "fail"),)] == 1
    assert samples["offload_job_duration_seconds_sum", (("kind", "hash"),)] > 0
    assert samples["offload_upload_bytes_total", ()] == sum(path.stat().st_size for path in paths)
    assert samples["offload_uploaded_files_total", ()] == 2
    assert samples["offload_workers", ()] == 2
    assert samples["offload_workers_busy", ()] == 0
    assert samples["offload_worker_restarts_total", ()] == 0
    assert samples["offload_queue_depth", ()] == 0
    assert samples["offload_sessions", ()] == 1
    assert samples["offload_ready", ()] == 1
    assert samples["offload_jobs", (("kind", "hash"), ("state", "running"))] == 0


def test_metrics_gauges_follow_running_jobs(server_factory: Any) -> None:
    server = server_factory("--workers", "1")
    api = Api(server)
    running = api.start("spin", [], seconds=60)
    queued = api.start("spin", [], seconds=60)
    api.wait_job(running["job_id"], states=frozenset({"running"}))

    samples = scrape(server.url)
    assert samples["offload_jobs", (("kind", "spin"), ("state", "running"))] == 1
    assert samples["offload_jobs", (("kind", "spin"), ("state", "queued"))] == 1
    assert samples["offload_queue_depth", ()] == 1
    assert samples["offload_workers_busy", ()] == 1

    # A job cancelled while queued never ran, so it is counted but has no duration.
    assert api.client.post(f"{api.prefix}/jobs/{queued['job_id']}/cancel").status_code == 202
    assert api.client.post(f"{api.prefix}/jobs/{running['job_id']}/cancel").status_code == 202
    api.wait_job(running["job_id"])
    samples = scrape(server.url)
    assert samples["offload_jobs_finished_total", (("kind", "spin"), ("state", "cancelled"))] == 2
    assert samples["offload_job_duration_seconds_count", (("kind", "spin"),)] == 1
    assert samples["offload_jobs", (("kind", "spin"), ("state", "running"))] == 0


def test_metrics_need_no_token(server_factory: Any) -> None:
    server = server_factory()
    response = httpx.get(server.url + "/metrics")
    assert response.status_code == 200
    assert "offload_workers 2.0" in response.text


def test_each_runtime_has_its_own_registry(tmp_path: Path) -> None:
    first = Runtime(Settings(data_dir=tmp_path / "a"))
    second = Runtime(Settings(data_dir=tmp_path / "b"))
    first.metrics.upload_stored(10)
    assert b"offload_upload_bytes_total 10.0" in first.metrics.render()
    assert b"offload_upload_bytes_total 0.0" in second.metrics.render()
    assert prometheus_client.REGISTRY.get_sample_value("offload_upload_bytes_total") is None


def test_job_of_deleted_session_is_counted_once(server_factory: Any) -> None:
    server = server_factory()
    api = Api(server)
    job = api.start("spin", [], seconds=60)
    api.wait_job(job["job_id"], states=frozenset({"running"}))
    assert api.client.delete(api.prefix).status_code == 204

    key = ("offload_jobs_finished_total", (("kind", "spin"), ("state", "cancelled")))
    deadline = time.monotonic() + 30
    while scrape(server.url).get(key) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    samples = scrape(server.url)
    assert samples.get(key) == 1
    assert samples["offload_jobs", (("kind", "spin"), ("state", "running"))] == 0
    assert sum(value for (name, _), value in samples.items() if name == "offload_jobs_finished_total") == 1


def test_loop_lag_sampler_is_opt_in(server_factory: Any) -> None:
    plain = scrape(server_factory().url)
    assert not any(name.startswith("offload_event_loop_lag") for name, _ in plain)

    server = server_factory("--loop-lag-interval-s", "0.01")
    deadline = time.monotonic() + 10
    count = 0.0
    while count < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
        count = scrape(server.url).get(("offload_event_loop_lag_seconds_count", ()), 0.0)
    assert count >= 5
    samples = scrape(server.url)
    assert samples["offload_event_loop_lag_seconds_bucket", (("le", "+Inf"),)] >= 5
