"""Which model a full multiplexed replica unloads (serve_apps/eviction.py), without Ray: the counting rule."""

from __future__ import annotations

from serve_apps.eviction import RecentFrequency


def test_the_least_asked_for_goes_first_and_the_least_recent_among_equals() -> None:
    frequency = RecentFrequency(window=100)
    for key in ["a", "a", "a", "b", "c", "c"]:
        frequency.record(key)
    assert frequency.victim(["a", "b", "c"]) == "b"
    assert frequency.victim(["a", "c"]) == "c"
    # Even traffic: the order given (least recently used first) decides, as LRU would.
    frequency.record("b")
    assert frequency.victim(["c", "b"]) == "c"
    assert frequency.victim(["b", "c"]) == "b"


def test_a_key_never_asked_for_is_the_first_victim() -> None:
    frequency = RecentFrequency(window=100)
    frequency.record("a")
    assert frequency.victim(["a", "new"]) == "new"


def test_counts_halve_every_window_so_old_popularity_fades() -> None:
    frequency = RecentFrequency(window=10)
    for _ in range(9):
        frequency.record("old")
    frequency.record("x")  # the tenth record: everything halves, ones are forgotten
    assert frequency.counts == {"old": 4}
    for _ in range(10):  # "new" is now asked for more than "old" lately, although less over all time
        frequency.record("new")
    assert frequency.counts == {"old": 2, "new": 5}
    assert frequency.victim(["new", "old"]) == "old"
