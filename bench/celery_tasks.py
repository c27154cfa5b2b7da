"""The Celery app and trivial task of the Celery baseline; the broker URL comes from BENCH_CELERY_BROKER."""

from __future__ import annotations

import os

from celery import Celery

BROKER_URL = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/0")


def make_app() -> Celery:
    """Build a Celery app on the benchmark's Redis, used as broker and result backend."""
    app = Celery("bench", broker=BROKER_URL, backend=BROKER_URL)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    worker_prefetch_multiplier=1, task_acks_late=False, broker_connection_retry_on_startup=True,
                    worker_hijack_root_logger=False)
    return app


app = make_app()


@app.task(name="bench.noop")
def noop() -> dict[str, int]:
    return {"ok": 1}
