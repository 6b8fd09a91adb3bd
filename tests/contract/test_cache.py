"""The LRU map behind the text, reference and decoded-image caches."""

from __future__ import annotations

import threading

import pytest

from model.contract.cache import LRUCache


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: LRUCache[int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == cache.weight == 2


def test_weighed_entries_keep_their_sum_within_the_capacity() -> None:
    cache: LRUCache[bytes] = LRUCache(10, weigh=len)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    cache.put("a", b"12")  # replaced: its old weight is given back
    assert cache.weight == 6
    cache.put("c", b"123456")  # 12 > 10: the least recent ("b") goes
    assert "b" not in cache and cache.weight == 8
    cache.put("d", b"x" * 11)  # heavier than the whole cache: not kept, nothing evicted for it
    assert "d" not in cache and cache.weight == 8 and len(cache) == 2


def test_a_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1, got 0"):
        LRUCache(0)


def test_threads_sharing_a_cache_keep_its_weight_exact() -> None:
    cache: LRUCache[bytes] = LRUCache(1000, weigh=len)
    start = threading.Barrier(4, timeout=30)

    def work(worker: int) -> None:
        start.wait()
        for i in range(2000):
            cache.put(f"{worker}-{i % 50}", b"x" * (i % 13 + 1))
            cache.get(f"{(worker + 1) % 4}-{i % 50}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = [key for w in range(4) for key in (f"{w}-{i}" for i in range(50)) if key in cache]
    assert cache.weight == sum(len(cache.get(key) or b"") for key in kept) <= 1000
    assert len(kept) == len(cache)
