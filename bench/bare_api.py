"""A bare job API, the baseline for the HTTP and websocket cost of a job: ``python -m bench.bare_api PORT``.

It serves the routes of Offload that the trivial-job benchmark uses, on Quart and Hypercorn, with
the same requests, replies and websocket messages: ``POST /api/sessions``, the session websocket
with its snapshot, ``POST /api/sessions/SID/jobs`` and ``DELETE /api/sessions/SID``. A job does
nothing, so each one publishes its four events (``queued``, ``running``, ``result``, ``succeeded``)
at once. There is no pool, Manager, journal, validation or authentication. Offload's jobs/s divided
by this server's shows how much of the cost per job is Offload's own and how much is the framework's.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from typing import Any

from quart import Quart, Response, request, websocket

from bench.bare_upload import serve_command

app = Quart("bare_api")
# Session id -> the queues of its websocket clients.
_subscribers: dict[str, set[asyncio.Queue[str]]] = {}
_last_seq: dict[str, int] = {}


def _json(data: Any, status: int) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


@app.post("/api/sessions")
async def create_session() -> Response:
    session_id = secrets.token_urlsafe(16)
    _subscribers[session_id] = set()
    _last_seq[session_id] = 0
    return _json({"session_id": session_id, "token": secrets.token_urlsafe(32), "expires_at": time.time() + 3600},
                 201)


@app.delete("/api/sessions/<session_id>")
async def delete_session(session_id: str) -> Response:
    _subscribers.pop(session_id, None)
    _last_seq.pop(session_id, None)
    return Response("", status=204)


@app.post("/api/sessions/<session_id>/jobs")
async def create_job(session_id: str) -> Response:
    payload = json.loads(await request.get_data())
    now = time.time()
    record = {
        "job_id": secrets.token_urlsafe(16), "kind": payload["kind"], "state": "queued",
        "inputs": payload["inputs"], "params": payload["params"], "timeout_s": 3600.0,
        "progress": {"done": 0, "total": None, "unit": "", "message": ""}, "result": None, "error": None,
        "outputs": [], "attempts": 0, "created_at": now, "started_at": None, "finished_at": None,
    }
    _publish(session_id, {"job_id": record["job_id"], "type": "state", "state": "queued", "job": record})
    running = {**record, "state": "running", "attempts": 1, "started_at": now}
    _publish(session_id, {"job_id": record["job_id"], "type": "state", "state": "running", "job": running})
    result = {"ok": 1}
    _publish(session_id, {"job_id": record["job_id"], "type": "result", "result": result})
    done = {**running, "state": "succeeded", "result": result, "finished_at": time.time()}
    _publish(session_id, {"job_id": record["job_id"], "type": "state", "state": "succeeded", "job": done})
    return _json(record, 202)


def _publish(session_id: str, event: dict[str, Any]) -> None:
    seq = _last_seq[session_id] = _last_seq[session_id] + 1
    text = json.dumps({"seq": seq, **event})
    for queue in _subscribers.get(session_id, ()):
        queue.put_nowait(text)


@app.websocket("/api/sessions/<session_id>/ws")
async def session_stream(session_id: str) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    _subscribers[session_id].add(queue)
    try:
        await websocket.accept()
        await websocket.send(json.dumps({"seq": _last_seq[session_id], "job_id": None, "type": "snapshot",
                                         "jobs": []}))
        while True:
            await websocket.send(await queue.get())
    finally:
        _subscribers.get(session_id, set()).discard(queue)


def main(argv: list[str] | None = None) -> int:
    return serve_command(app, "bench.bare_api", argv)


if __name__ == "__main__":
    sys.exit(main())
