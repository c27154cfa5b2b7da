"""Generated ids: unique across threads, 128 bits, URL-safe."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from app.sessions import new_id


def make_ids(count: int) -> list[str]:
    return [new_id() for _ in range(count)]


def test_ids_unique_across_threads() -> None:
    with ThreadPoolExecutor(4) as executor:
        batches = list(executor.map(make_ids, [5000] * 4))
    ids = [identifier for batch in batches for identifier in batch]

    assert len(set(ids)) == len(ids)
    # 16 random bytes in URL-safe base64 without padding.
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", identifier) for identifier in ids)
