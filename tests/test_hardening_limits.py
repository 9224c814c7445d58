"""The [limits] settings added for issue 12: safe defaults, and values that would switch a
limit off (or make it unsatisfiable) refused when the file is loaded."""

from __future__ import annotations

import pytest

from sfu.config import MAX_RIDS, Config, ConfigError
from sfu.ratelimit import TokenBucket


def test_defaults():
    limits = Config().limits
    assert limits.max_whep_sessions_per_identity == 4
    assert (limits.max_media_per_offer, limits.max_rids_per_media) == (16, 4) and MAX_RIDS == 4
    assert (limits.max_event_queue, limits.max_event_queue_bytes) == (1000, 4 * 1024 * 1024)
    assert (limits.data_messages_per_s, limits.data_bytes_per_s) == (50.0, 256 * 1024)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_whep_sessions_per_identity": 0}, "max_whep_sessions_per_identity must be at"),
        ({"max_media_per_offer": 0}, "max_media_per_offer must be at least 1"),
        ({"max_rids_per_media": 5}, "max_rids_per_media must be within 1..4"),
        ({"max_rids_per_media": 0}, "max_rids_per_media must be within 1..4"),
        ({"max_event_queue": 0}, "max_event_queue must be at least 1"),
        ({"max_event_queue_bytes": 1000}, "max_event_queue_bytes must be at least max_message"),
        ({"data_messages_per_s": 0}, "data_messages_per_s and data_bytes_per_s must be positive"),
        ({"data_bytes_per_s": -1}, "data_messages_per_s and data_bytes_per_s must be positive"),
        ({"connect_timeout_s": 0}, "connect_timeout_s must be positive"),
        ({"max_event_queue": "many"}, "limits.max_event_queue must be int"),
    ],
)
def test_bad_limits_are_refused(limits, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"limits": limits})


def test_limits_load_from_toml_values():
    config = Config.from_dict(
        {"limits": {"data_messages_per_s": 5, "max_rids_per_media": 3, "max_event_queue": 10}}
    )
    assert config.limits.data_messages_per_s == 5.0
    assert isinstance(config.limits.data_messages_per_s, float)
    assert (config.limits.max_rids_per_media, config.limits.max_event_queue) == (3, 10)


def test_token_bucket_refills_at_its_rate_up_to_its_capacity():
    now = [0.0]
    bucket = TokenBucket(rate=10.0, capacity=20.0, clock=lambda: now[0])
    assert sum(bucket.take() for _ in range(30)) == 20  # starts full
    now[0] += 0.5
    assert sum(bucket.take() for _ in range(30)) == 5
    now[0] += 100.0
    assert sum(bucket.take() for _ in range(30)) == 20  # never more than the capacity
    assert not bucket.take(21)  # more than it can ever hold
    with pytest.raises(ValueError):
        TokenBucket(rate=0, capacity=1)
