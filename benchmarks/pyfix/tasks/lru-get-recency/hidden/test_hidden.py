from lrucache import LRUCache, memoize


def test_get_protects_entry_from_eviction():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert "a" in cache and "b" not in cache
    assert cache.keys() == ["a", "c"]


def test_get_moves_entry_to_most_recent():
    cache = LRUCache(3)
    for key in "xyz":
        cache.put(key, key.upper())
    cache.get("x")
    cache.get("y")
    assert cache.keys() == ["z", "x", "y"]


def test_miss_does_not_change_order():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("zzz") is None
    assert cache.keys() == ["a", "b"]


def test_peek_and_contains_do_not_change_order():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.peek("a") == 1 and "a" in cache
    cache.put("c", 3)
    assert cache.keys() == ["b", "c"]


def test_memoize_keeps_hot_arguments():
    calls = []

    @memoize(capacity=2)
    def double(x):
        calls.append(x)
        return 2 * x

    double(1)
    double(2)
    double(1)  # hit: 1 is now the most recently used
    double(3)  # evicts 2, not 1
    double(1)
    assert calls == [1, 2, 3]
    assert double.cache.hits == 2
