"""The signalling message decoder (sfu/api/protocol.py, sfu/api/signalling.py) on arbitrary
WebSocket text.

`SignallingConnection._dispatch` is where a text frame becomes a request: JSON decoding, the
type lookup, the join-state check, and each handler's field validation. Documented
behaviour (module docstring): bad input gets an `error` message, never a dropped socket
(except a bad token on join: 4401). So for any text: the dispatch returns, every reply is a
JSON object, no reply is an `internal` error (that is an exception a handler did not
expect), and one request gets at most a few replies.

It runs against a real SfuNode (rooms, participants, aiortc sessions) in this process; only
the socket is a recorder standing in for aiohttp's WebSocketResponse.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu import Config, create_app
from sfu.api.keys import NODE_KEY
from sfu.api.signalling import SignallingConnection, State
from sfu.auth import Grants, mint_token

from .budget import fuzz
from .corpus import corpus

pytestmark = pytest.mark.fuzz

TYPES = [
    "join",
    "publish",
    "unpublish",
    "subscribe",
    "unsubscribe",
    "answer",
    "quality",
    "data",
    "ping",
    "leave",
]
ERROR_CODES = {
    "bad_request",
    "bad_sdp",
    "unknown_type",
    "not_joined",
    "already_joined",
    "unauthorized",
    "forbidden",
    "not_found",
    "room_full",
    "node_full",
    "negotiation_failed",
    "rate_limited",
    "too_many",
}


class RecordingSocket:
    """What SignallingConnection uses of a WebSocketResponse; records what is sent."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.closed = False
        self.close_code: int | None = None

    async def send_json(self, message: dict) -> None:
        json.dumps(message)  # what aiohttp does with it: must not raise
        self.sent.append(message)

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        self.closed, self.close_code = True, code


class Harness:
    """One node and event loop for the module; a joined connection kept between inputs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.config = Config()
        self.node = create_app(self.config)[NODE_KEY]
        self.joined: SignallingConnection | None = None
        self.socket = RecordingSocket()

    def token(self, identity: str, **grants: bool) -> str:
        return mint_token(self.config.auth, identity=identity, room="shop", grants=Grants(**grants))

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    async def settle(self, connection: SignallingConnection) -> None:
        """Let the event writer deliver what the request queued."""
        participant = connection.participant
        for _ in range(50):
            if participant is None or participant.events is None or participant.events.empty():
                break
            await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def fresh(self, text: str) -> list[dict]:
        """A new connection (not joined) gets one text; it leaves again if it joined."""
        socket = RecordingSocket()
        connection = SignallingConnection(self.node, socket, None)
        await connection._dispatch(text)
        await self.settle(connection)
        await connection._leave()
        return socket.sent

    async def joined_text(self, text: str) -> list[dict]:
        """A joined connection (publish + subscribe grants) gets one text."""
        if self.joined is None or self.joined.state != State.JOINED:
            if self.joined is not None:
                await self.joined._leave()
            self.socket = RecordingSocket()
            self.joined = SignallingConnection(self.node, self.socket, None)
            token = self.token("fuzzer", publish=True, subscribe=True)
            await self.joined._dispatch(json.dumps({"type": "join", "token": token}))
            await self.settle(self.joined)
            assert self.joined.state == State.JOINED, self.socket.sent
        before = len(self.socket.sent)
        await self.joined._dispatch(text)
        await self.settle(self.joined)
        return self.socket.sent[before:]

    def close(self) -> None:
        async def shut() -> None:
            if self.joined is not None:
                await self.joined._leave()
            await self.node.close()

        self.run(shut())
        self.loop.close()


@pytest.fixture(scope="module")
def harness():
    h = Harness()
    try:
        yield h
    finally:
        h.close()


def check_replies(replies: list[dict]) -> None:
    assert len(replies) <= 4, replies
    for reply in replies:
        assert isinstance(reply, dict) and isinstance(reply.get("type"), str), reply
        if reply["type"] == "error":
            assert reply["code"] in ERROR_CODES, reply  # never "internal"
            assert isinstance(reply["message"], str) and reply["message"]


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(1 << 64), 1 << 64),
        st.floats(allow_nan=False),
        st.text(max_size=30),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


short_text = st.text(max_size=12)
# For each field, values of the right type (often) or of any type.
FIELD_VALUES = {
    "request_id": json_values,
    "room": st.one_of(st.just("shop"), short_text),
    "name": short_text,
    "metadata": st.dictionaries(short_text, json_values, max_size=3),
    "publish": st.fixed_dictionaries({"sdp": short_text.map(lambda t: "v=0\r\n" + t)}),
    "sdp": st.one_of(short_text, short_text.map(lambda t: "v=0\r\n" + t)),
    "tracks": st.lists(
        st.dictionaries(st.sampled_from(["mid", "kind", "source", "name"]), json_values),
        max_size=3,
    ),
    "track_ids": st.lists(st.one_of(st.just("TR_x"), short_text), max_size=3),
    "track_id": st.one_of(st.just("TR_x"), short_text),
    "quality": st.sampled_from(["auto", "low", "medium", "high", "ultra", ""]),
    "max_width": st.integers(-1, 20000),
    "max_height": st.integers(-1, 20000),
    "payload": json_values,
    "topic": short_text,
    "to": st.lists(short_text, max_size=3),
    "ts": json_values,
    "auto_subscribe": st.booleans(),
    "inline_offer": st.booleans(),
}


NEEDS = {  # the fields each type reads
    "join": ("room", "name", "metadata", "publish"),
    "publish": ("sdp", "tracks"),
    "unpublish": ("track_id",),
    "subscribe": ("track_ids",),
    "unsubscribe": ("track_ids",),
    "answer": ("sdp",),
    "quality": ("track_id", "quality", "max_width", "max_height"),
    "data": ("payload", "topic", "to"),
    "ping": ("ts",),
}


@st.composite
def messages(draw, token: str) -> str:
    """A JSON object: a known type (mostly) and fields with plausible or arbitrary values."""
    kind = draw(st.one_of(st.sampled_from(TYPES), st.sampled_from(TYPES), json_values))
    message = {"type": kind}
    keys = list(NEEDS.get(kind, ())) if isinstance(kind, str) and draw(st.booleans()) else []
    keys += draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=4, unique=True))
    for key in keys:
        message[key] = draw(st.one_of(FIELD_VALUES[key], FIELD_VALUES[key], json_values))
    if message["type"] == "join" and draw(st.booleans()):
        message["token"] = token
    return json.dumps(message)


texts = st.one_of(
    st.text(max_size=100),
    json_values.map(json.dumps),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),  # nesting depth
    st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
)


@fuzz(300)
@given(st.one_of(texts, messages("TOKEN")))
def test_signalling_before_join(harness: Harness, text: str) -> None:
    text = text.replace('"TOKEN"', json.dumps(harness.token("guest", subscribe=True)))
    check_replies(harness.run(harness.fresh(text)))


@fuzz(500)
@given(st.one_of(texts, messages("TOKEN")))
def test_signalling_after_join(harness: Harness, text: str) -> None:
    check_replies(harness.run(harness.joined_text(text)))


@pytest.mark.parametrize("data", corpus("signalling"))
def test_signalling_corpus(harness: Harness, data: bytes) -> None:
    text = data.decode("utf-8")
    check_replies(harness.run(harness.fresh(text)))
    check_replies(harness.run(harness.joined_text(text)))
