"""Tokens: what mint/verify accept and refuse, and how the server answers each refusal."""

from __future__ import annotations

import time

import aiohttp
import jwt
import pytest

from sfu.auth import AuthError, Grants, PermissionDenied, mint_token, verify_token
from sfu.config import AuthSettings

SECRET = "unit-test-secret-0123456789abcdefghijklmnop"
SETTINGS = AuthSettings(api_keys={"k1": SECRET, "k2": "second-secret-0123456789abcdefghijklm"})


def _claims(**overrides) -> dict:
    now = int(time.time())
    claims = {
        "iss": "k1",
        "sub": "alice",
        "room": "shop",
        "grants": {"publish": True, "subscribe": True},
        "iat": now,
        "exp": now + 60,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


# -- mint / verify ----------------------------------------------------------------------------


def test_mint_then_verify_round_trip():
    token = mint_token(
        SETTINGS, identity="alice", room="shop", grants=Grants(publish=True), ttl_s=60, name="A"
    )
    access = verify_token(SETTINGS, token)
    assert access.identity == "alice" and access.room == "shop" and access.name == "A"
    assert access.grants == Grants(publish=True)
    assert access.api_key == "k1"
    assert 50 <= access.expires_at - time.time() <= 70


def test_mint_with_a_second_key_is_verified_with_that_key():
    token = mint_token(SETTINGS, identity="a", room="r", grants=Grants(), api_key="k2")
    assert verify_token(SETTINGS, token).api_key == "k2"
    with pytest.raises(AuthError, match="unknown API key"):
        verify_token(AuthSettings(api_keys={"k1": SECRET}), token)


def test_expired_token_is_refused():
    token = mint_token(SETTINGS, identity="a", room="r", grants=Grants(), ttl_s=-30)
    with pytest.raises(AuthError, match="token expired"):
        verify_token(SETTINGS, token)


def test_forged_signature_is_refused():
    forged = _sign(_claims(), secret="attacker-secret-0123456789abcdefghijklmn")
    with pytest.raises(AuthError, match="invalid token"):
        verify_token(SETTINGS, forged)
    # a valid token whose payload was edited keeps a signature that no longer matches
    header, _payload, signature = mint_token(
        SETTINGS, identity="a", room="r", grants=Grants()
    ).split(".")
    edited_payload = _sign(_claims(grants={"admin": True})).split(".")[1]
    with pytest.raises(AuthError, match="invalid token"):
        verify_token(SETTINGS, f"{header}.{edited_payload}.{signature}")


def test_unsigned_alg_none_token_is_refused():
    token = jwt.encode(_claims(grants={"admin": True}), None, algorithm="none")
    with pytest.raises(AuthError):
        verify_token(SETTINGS, token)


def test_unknown_key_is_refused():
    with pytest.raises(AuthError, match="unknown API key"):
        verify_token(SETTINGS, _sign(_claims(iss="nobody")))
    with pytest.raises(AuthError, match="unknown API key"):
        verify_token(SETTINGS, _sign(_claims(iss=None)))


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "eyJhbGciOiJIUzI1NiJ9..."])
def test_malformed_token_is_refused(token: str):
    with pytest.raises(AuthError, match="malformed token"):
        verify_token(SETTINGS, token)


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_refused(token):
    with pytest.raises(AuthError, match="missing access token"):
        verify_token(SETTINGS, token)


@pytest.mark.parametrize("claim", ["exp", "sub"])
def test_token_without_a_required_claim_is_refused(claim: str):
    with pytest.raises(AuthError, match=claim):
        verify_token(SETTINGS, _sign(_claims(**{claim: None})))


@pytest.mark.parametrize(
    "overrides", [{"sub": ""}, {"sub": "x" * 200}, {"grants": ["publish"]}, {"room": 5}]
)
def test_token_with_malformed_claims_is_refused(overrides: dict):
    with pytest.raises(AuthError):
        verify_token(SETTINGS, _sign(_claims(**overrides)))


@pytest.mark.parametrize("value", ["false", "true", "", 0, 1, None, [], {}])
def test_grants_must_be_json_booleans(value):
    """A string "false" is truthy in Python: any non-boolean grant makes the token malformed."""
    with pytest.raises(AuthError, match="'admin' must be true or false"):
        verify_token(SETTINGS, _sign(_claims(room="*", grants={"admin": value})))


def test_unknown_grants_are_ignored_and_known_ones_must_be_booleans():
    access = verify_token(SETTINGS, _sign(_claims(grants={"subscribe": True, "record": "x"})))
    assert access.grants == Grants(subscribe=True)


@pytest.mark.parametrize(("room", "node_wide"), [("*", True), ("", True), ("shop", False)])
def test_node_wide_is_star_or_empty_room(room: str, node_wide: bool):
    access = verify_token(SETTINGS, _sign(_claims(room=room, grants={"agent": True})))
    assert access.node_wide is node_wide
    if node_wide:
        access.require_node_wide()
    else:
        with pytest.raises(PermissionDenied, match="node-wide"):
            access.require_node_wide()


def test_missing_grants_allow_nothing():
    access = verify_token(SETTINGS, _sign(_claims(grants=None)))
    assert access.grants == Grants()
    for grant in ("publish", "subscribe", "admin", "agent"):
        with pytest.raises(PermissionDenied, match=grant):
            access.require(grant)
    partial = verify_token(SETTINGS, _sign(_claims(grants={"subscribe": True})))
    partial.require("subscribe")
    with pytest.raises(PermissionDenied, match="publish"):
        partial.require("publish")


def test_wrong_room_is_refused():
    access = verify_token(SETTINGS, _sign(_claims(room="shop")))
    access.require_room("shop")
    with pytest.raises(PermissionDenied, match="not 'other'"):
        access.require_room("other")


def test_any_room_needs_an_admin_or_agent_grant():
    viewer = verify_token(SETTINGS, _sign(_claims(room="*", grants={"subscribe": True})))
    with pytest.raises(PermissionDenied):
        viewer.require_room("shop")
    for grant in ("admin", "agent"):
        access = verify_token(SETTINGS, _sign(_claims(room="*", grants={grant: True})))
        access.require_room("shop")
        access.require_room("other")


# -- over the real server: WebSocket join ------------------------------------------------------


async def _join(node, message: dict, query: str = "") -> tuple[dict, aiohttp.WSMessage]:
    """Send one join; return the first reply and the message after it (close or event)."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{node.url}/rtc{query}") as ws:
            await ws.send_json({"type": "join", "request_id": 7, **message})
            reply = await ws.receive_json(timeout=10)
            after = await ws.receive(timeout=2) if reply["type"] == "error" else None
            return reply, after


def _foreign_token() -> str:
    return _sign(_claims(), secret="not-the-node-secret-0123456789abcdefghij")


@pytest.mark.parametrize("case", ["none", "forged", "expired", "unknown_key", "garbage"])
async def test_ws_join_refused_and_closed_4401(sfu_node, case: str):
    tokens = {
        "none": None,
        "forged": _foreign_token(),
        "expired": sfu_node.token("alice", ttl_s=-30),
        "unknown_key": mint_token(SETTINGS, identity="a", room="shop", grants=Grants()),
        "garbage": "garbage",
    }
    message = {} if tokens[case] is None else {"token": tokens[case]}
    reply, after = await _join(sfu_node, message)
    assert reply["type"] == "error" and reply["code"] == "unauthorized", reply
    assert reply["request_id"] == 7
    assert after.type == aiohttp.WSMsgType.CLOSE and after.data == 4401
    assert sfu_node.node.rooms.rooms == {}


async def test_ws_join_refused_with_bad_query_token(sfu_node):
    reply, after = await _join(sfu_node, {}, query=f"?access_token={_foreign_token()}")
    assert reply["code"] == "unauthorized"
    assert after.data == 4401


async def test_ws_join_with_query_token_is_accepted(sfu_node):
    reply, _ = await _join(sfu_node, {}, query=f"?access_token={sfu_node.token('alice')}")
    assert reply["type"] == "joined" and reply["room"] == "shop"


async def test_ws_join_wrong_room_is_forbidden(sfu_node):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{sfu_node.url}/rtc") as ws:
            token = sfu_node.token("alice", room="shop")
            await ws.send_json({"type": "join", "token": token, "room": "vip", "request_id": 1})
            reply = await ws.receive_json(timeout=10)
            assert reply["type"] == "error" and reply["code"] == "forbidden", reply
            assert "vip" in reply["message"]
            assert "vip" not in sfu_node.node.rooms.rooms
            # the socket stays usable: the right room works
            await ws.send_json({"type": "join", "token": token, "request_id": 2})
            assert (await ws.receive_json(timeout=10))["type"] == "joined"


async def test_publish_without_publish_grant_is_forbidden(sfu_node):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{sfu_node.url}/rtc") as ws:
            token = sfu_node.token("viewer", subscribe=True)
            await ws.send_json({"type": "join", "token": token, "request_id": 1})
            joined = await ws.receive_json(timeout=10)
            assert joined["grants"] == {"publish": False, "subscribe": True}
            await ws.send_json({"type": "publish", "sdp": "v=0\r\n", "request_id": 2})
            reply = await ws.receive_json(timeout=10)
            assert reply == {
                "type": "error",
                "code": "forbidden",
                "message": "token lacks the 'publish' grant",
                "request_id": 2,
            }
            room = sfu_node.node.rooms.rooms["shop"]
            assert room.participants["viewer"].publisher is None and room.producers == {}


async def test_subscribe_without_subscribe_grant_is_forbidden(sfu_node):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{sfu_node.url}/rtc") as ws:
            token = sfu_node.token("host", publish=True)
            await ws.send_json({"type": "join", "token": token, "request_id": 1})
            assert (await ws.receive_json(timeout=10))["type"] == "joined"
            await ws.send_json({"type": "subscribe", "track_ids": ["TR_x"], "request_id": 2})
            reply = await ws.receive_json(timeout=10)
            assert reply["code"] == "forbidden" and reply["request_id"] == 2


# -- over the real server: admin API -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/rooms", "/api/stats"])
async def test_admin_endpoints_need_an_admin_token(sfu_node, path: str):
    admin = sfu_node.token("ops", room="*", admin=True)
    cases = [
        (None, 401, "unauthorized"),
        ("Basic dXNlcjpwYXNz", 401, "unauthorized"),
        (f"Bearer {_foreign_token()}", 401, "unauthorized"),
        (f"Bearer {sfu_node.token('ops', room='*', admin=True, ttl_s=-30)}", 401, "unauthorized"),
        (f"Bearer {sfu_node.token('alice')}", 403, "forbidden"),
        (f"Bearer {sfu_node.token('bot', room='*', agent=True)}", 403, "forbidden"),
        (f"Bearer {admin}", 200, None),
    ]
    async with aiohttp.ClientSession() as session:
        for header, status, error in cases:
            headers = {"Authorization": header} if header else {}
            async with session.get(f"{sfu_node.url}{path}", headers=headers) as response:
                assert response.status == status, (header, await response.text())
                body = await response.json()
            if error:
                assert body["error"] == error and body["message"]
            elif path == "/api/rooms":
                assert body == {"rooms": []}
            else:
                assert body["node_id"] == sfu_node.node.node_id and body["rooms"] == []
