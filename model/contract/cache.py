"""A bounded least-recently-used map, shared by the text, reference and decoded-image caches.
Pure: no torch."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """Entries whose weights sum to at most `capacity` (each weighs 1 unless `weigh` says
    otherwise); reading or writing an entry makes it the most recent. Safe to share between
    threads: the queue validates requests on two threads at once."""

    def __init__(self, capacity: int, weigh: Callable[[V], int] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.weigh = weigh
        self.weight = 0  # the entries' weights, summed
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value: V) -> None:
        """Keep `value`, evicting the least recent entries past the capacity; a value that alone
        weighs more than the capacity is not kept."""
        weight = self.weigh(value) if self.weigh else 1
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.weight -= old[1]
            if weight > self.capacity:
                return
            self._items[key] = (value, weight)
            self.weight += weight
            while self.weight > self.capacity:
                _, (_, evicted) = self._items.popitem(last=False)
                self.weight -= evicted
