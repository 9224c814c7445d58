"""Property tests of the network inputs metrics and webhooks read: data messages relayed by a
room (any client can send any JSON) and webhook requests on a shop's receiver."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.metrics.histogram import Histogram
from sfu.metrics.observers import EventMetrics
from sfu.webhooks import WebhookVerificationError, sign_webhook, verify_webhook

KEY = "k"
SECRET = "fuzz-secret-0123456789abcdefghijklmnopqrstuv"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)
timings = st.dictionaries(
    st.sampled_from(["endpointing", "stt", "answer", "tts_first_audio", "reply", "other"]),
    json_values,
    max_size=6,
)
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"speaker": st.sampled_from(["agent", "user", 3]), "final": json_values},
        optional={"timings_ms": st.one_of(timings, json_values)},
    ),
    st.fixed_dictionaries(
        {"final": json_values, "end": json_values}, optional={"kind": json_values}
    ),
)
topics = st.sampled_from(
    ["transcript", "interruption", "captions/pt", "captions/subscribe", "chat", ""]
)


def sender(identity: str) -> SimpleNamespace:
    return SimpleNamespace(identity=identity, metadata={})


def histograms(events: EventMetrics) -> list[Histogram]:
    return [events.voice_to_voice, events.caption_delay, *events.agent_stages.values()]


@settings(max_examples=300, deadline=None)
@given(topic=topics, payload=payloads)
def test_any_relayed_message_is_safe_and_only_agents_count(topic, payload):
    events = EventMetrics()
    events.on_data(None, sender("buyer"), topic, payload)  # a human: never counted
    assert events.agent_turns == 0 and events.captions == 0
    assert all(h.count == 0 for h in histograms(events))
    events.on_data(None, sender("agent-1"), topic, payload)  # never raises
    assert events.agent_turns <= 1 and events.captions <= 1
    for histogram in histograms(events):
        assert histogram.count <= 1
        assert math.isfinite(histogram.sum) and 0 <= histogram.sum <= 1200  # plausible only
        assert sum(histogram.counts) == histogram.count


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), authorization=st.text(max_size=200))
def test_verify_webhook_only_raises_its_own_error_on_junk(body, authorization):
    try:
        verify_webhook(body, authorization, KEY, SECRET)
    except WebhookVerificationError:
        return
    raise AssertionError("junk verified")


@settings(max_examples=200, deadline=None)
@given(
    event=st.dictionaries(st.text(max_size=10), json_values, max_size=8), flip=st.integers(0, 10**6)
)
def test_any_changed_byte_is_refused(event, flip):
    body = json.dumps(event).encode()
    token = sign_webhook(body, KEY, SECRET)
    assert verify_webhook(body, token, KEY, SECRET) == json.loads(body)
    i = flip % len(body)
    changed = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
    try:
        verify_webhook(changed, token, KEY, SECRET)
    except WebhookVerificationError:
        return
    raise AssertionError("a changed body verified")
