"""A small thread-safe LRU cache with pinned entries and hit counters."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """Least-recently-used cache, safe to share between request threads.

    Pinned entries (for values every request needs, such as the empty prompt) never count
    against `capacity` and are never evicted.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._pinned: dict[Hashable, V] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            if key in self._pinned:
                self.hits += 1
                return self._pinned[key]
            if key in self._entries:
                self.hits += 1
                self._entries.move_to_end(key)
                return self._entries[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: V, pin: bool = False) -> None:
        with self._lock:
            if pin:
                self._pinned[key] = value
                return
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], V], pin: bool = False) -> V:
        """The cached value, or `compute()` stored under `key`.

        Two threads missing the same key at once both compute it; the values are equal, so the
        second store is harmless, and no lock is held while computing.
        """
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value, pin)
        return value

    def keys(self) -> list[Hashable]:
        with self._lock:
            return [*self._pinned, *self._entries]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._pinned.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries) + len(self._pinned)
