"""The reconnect policy of the Python client (sfu/client/resume.py): backoff bounded and
jittered, targets in order without duplicates (never the draining node after a `move`),
`fallbacks` from the network reduced to plausible URLs, and when a connection counts as dead."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.client import Reconnect
from sfu.client.resume import ConnectionHealth, fallback_urls, next_targets


@given(attempt=st.integers(0, 10_000), rand=st.floats(0, 1))
def test_backoff_is_bounded_and_jittered(attempt, rand):
    policy = Reconnect(initial_delay_s=0.2, max_delay_s=5.0, jitter=0.3)
    delay = policy.delay(attempt, rand=lambda: rand)
    base = min(5.0, 0.2 * 2 ** min(attempt, 30))
    assert 0.7 * base - 1e-9 <= delay <= 1.3 * base + 1e-9
    assert delay <= 6.5


def test_backoff_doubles_then_stops_growing():
    policy = Reconnect(initial_delay_s=0.25, max_delay_s=2.0, jitter=0.0)
    assert [policy.delay(n) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay_s": -1},
        {"initial_delay_s": 3, "max_delay_s": 1},
        {"jitter": 1.0},
        {"max_attempts": 0},
        {"dead_after_s": 0},
    ],
)
def test_nonsense_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        Reconnect(**kwargs)


def test_targets_same_node_first_then_learned_then_configured():
    assert next_targets("http://a/", ["http://b", "http://a"], ["http://c/", "http://b"]) == [
        "http://a",
        "http://b",
        "http://c",
    ]


def test_after_a_move_the_draining_node_is_not_a_target():
    targets = next_targets("http://a", ["http://c"], ["http://a"], moving=["http://b", "http://a"])
    assert targets == ["http://b", "http://c"]
    assert next_targets("http://a", [], []) == ["http://a"]


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=30,
    )
)
def test_fallbacks_from_the_network_are_only_plausible_urls(value):
    urls = fallback_urls(value)
    assert len(urls) <= 16
    for url in urls:
        assert isinstance(url, str) and url.startswith(("http://", "https://")) and len(url) < 2048


def test_fallbacks_take_strings_and_url_objects():
    value = ["http://a:1/", {"url": "https://b", "node_id": "b"}, "ftp://x", 3, {"u": "http://c"}]
    assert fallback_urls(value) == ["http://a:1", "https://b"]
    assert fallback_urls("http://a") == [] and fallback_urls(None) == []


def test_connection_health():
    health = ConnectionHealth(dead_after_s=3.0)
    assert health.check(["connected"], None, now=0) == ""
    assert health.check(["failed", "connected"], None, now=0.5) == "ICE failed"
    # disconnected: dead only once it lasted dead_after_s
    assert health.check(["disconnected"], None, now=1) == ""
    assert health.check(["disconnected"], None, now=3.9) == ""
    assert health.check(["disconnected"], None, now=4.0).startswith("ICE disconnected")
    assert health.check(["connected"], None, now=4.5) == ""  # recovered: the clock restarts
    assert health.check(["disconnected"], None, now=5) == ""
    # media: dead when the count has not moved for dead_after_s
    health.reset()
    assert health.check(["connected"], 10, now=10) == ""
    assert health.check(["connected"], 20, now=12) == ""
    assert health.check(["connected"], 20, now=14.9) == ""
    assert health.check(["connected"], 20, now=15.0).startswith("no media")
    assert health.check(["connected"], None, now=16) == ""  # nothing received: no verdict
    assert health.check(["connected"], 20, now=16.5) == ""
