"""lrucache: a bounded mapping that evicts the least recently used entry.

    cache = LRUCache(capacity=128)
    cache.put("k", value)
    cache.get("k")            # a hit makes "k" the most recently used entry

`memoize(capacity)` wraps a function of hashable arguments with an LRUCache.
"""

import functools
from collections import OrderedDict

__all__ = ["LRUCache", "memoize"]

_MISSING = object()


class LRUCache:
    def __init__(self, capacity):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        # Least recently used first, most recently used last.
        self._data = OrderedDict()

    def get(self, key, default=None):
        """Return the value for key (and mark it as used), or default."""
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            self.misses += 1
            return default
        self.hits += 1
        return value

    def peek(self, key, default=None):
        """Return the value for key without touching its recency or the stats."""
        return self._data.get(key, default)

    def put(self, key, value):
        """Insert or update key; evict the least recently used entry when full."""
        if key in self._data:
            self._data.move_to_end(key)
        self._data[key] = value
        if len(self._data) > self.capacity:
            self._data.popitem(last=False)
            self.evictions += 1

    def pop(self, key, default=None):
        return self._data.pop(key, default)

    def keys(self):
        """Keys from least to most recently used."""
        return list(self._data)

    def __contains__(self, key):
        return key in self._data

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        return f"LRUCache(capacity={self.capacity}, size={len(self)})"


def memoize(capacity=128):
    def decorate(func):
        cache = LRUCache(capacity)

        @functools.wraps(func)
        def wrapper(*args):
            value = cache.get(args, _MISSING)
            if value is _MISSING:
                value = func(*args)
                cache.put(args, value)
            return value

        wrapper.cache = cache
        return wrapper

    return decorate
