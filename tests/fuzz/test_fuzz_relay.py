"""The relay endpoints' input checks (sfu/cluster/relay_routes.py) on arbitrary JSON, and the
endpoints themselves on a real node: only a node-wide admin token gets in; any body is
either used or refused with 400/404, never a server error."""

from __future__ import annotations

import json

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.cluster.relay_origin import MAX_TRACKS_PER_RELAY, RelayError
from sfu.cluster.relay_routes import MAX_NAME, _string, _tracks
from tests.conftest import RunningNode

from .budget import fuzz

pytestmark = pytest.mark.fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)
bodies = st.dictionaries(
    st.sampled_from(["room", "node_id", "tracks", "sdp", "x"]), json_values, max_size=5
) | st.fixed_dictionaries({"tracks": st.lists(st.text(max_size=300), max_size=80)})


@fuzz(300)
@given(bodies)
def test_relay_body_fields_are_used_or_refused_with_400(body: dict) -> None:
    try:
        tracks = _tracks(body)
    except RelayError as exc:
        assert exc.status == 400
    else:
        assert len(tracks) <= MAX_TRACKS_PER_RELAY
        assert all(isinstance(t, str) and 0 < len(t) <= MAX_NAME for t in tracks)
        assert len(set(tracks)) == len(tracks)
    for key in ("room", "node_id"):
        try:
            value = _string(body, key)
        except RelayError as exc:
            assert exc.status == 400
        else:
            assert isinstance(value, str) and 0 < len(value) <= MAX_NAME


async def test_relay_endpoints_need_a_node_token_and_refuse_junk(sfu_node: RunningNode) -> None:
    url = f"{sfu_node.url}/internal/relay"
    node_token = sfu_node.token("node:other", room="*", admin=True)
    room_admin = sfu_node.token("ops", admin=True)  # a room's admin, not node-wide
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={}) as r:
            assert r.status == 401
        headers = {"Authorization": f"Bearer {room_admin}"}
        async with http.post(url, json={}, headers=headers) as r:
            assert r.status == 403
        headers = {"Authorization": f"Bearer {node_token}"}
        for body in ("not json", "[]", json.dumps({"room": "shop", "node_id": "x", "tracks": 5})):
            async with http.post(url, data=body, headers=headers) as r:
                assert r.status == 400, body
        body = {"room": "shop", "node_id": "x", "tracks": ["TR_nope"]}
        async with http.post(url, json=body, headers=headers) as r:
            assert r.status == 404 and (await r.json())["error"] == "not_found"
        for path in ("/RL_nope/answer", "/RL_nope/tracks"):
            async with http.post(
                url + path, json={"sdp": "v=0", "tracks": []}, headers=headers
            ) as r:
                assert r.status == 404, path
        async with http.delete(url + "/RL_nope", headers=headers) as r:
            assert r.status == 404
