"""Access tokens (sfu/auth.py): whatever a client sends as its token, `verify_token` returns
an AccessToken or raises AuthError, nothing else; an accepted token's fields are well-typed
and bounded. Inputs: arbitrary text, JWT-shaped junk, and tokens properly signed with the
node's secret (or another) carrying arbitrary claims, so the checks after the signature run.
"""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.auth import AccessToken, AuthError, verify_token
from sfu.config import AuthSettings

from .budget import fuzz
from .corpus import corpus

pytestmark = [
    pytest.mark.fuzz,
    # short keys for HS384 are part of the test (PyJWT warns when it signs with them)
    pytest.mark.filterwarnings("ignore:The HMAC key is"),
]

SETTINGS = AuthSettings()
KEY, SECRET = next(iter(SETTINGS.api_keys.items()))

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(1 << 70), 1 << 70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
now = int(time.time())
claim_values = {
    "iss": st.one_of(st.just(KEY), json_values),
    "sub": st.one_of(st.text(max_size=200), json_values),
    "room": st.one_of(st.sampled_from(["shop", "", "*"]), json_values),
    "name": json_values,
    "grants": st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                g: st.one_of(st.booleans(), json_values)
                for g in ("publish", "subscribe", "admin", "agent")
            },
        ),
        json_values,
    ),
    "exp": st.one_of(st.integers(now - 100, now + 10_000), json_values),
    "nbf": json_values,
    "iat": json_values,
    "aud": json_values,
}
claims = st.builds(
    lambda base, extra: {**base, **extra},
    st.fixed_dictionaries(
        {"iss": st.just(KEY), "sub": st.text(min_size=1, max_size=10), "exp": st.just(now + 600)}
    ),
    st.fixed_dictionaries({}, optional=claim_values),
)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def check_token(token: object) -> None:
    try:
        access = verify_token(SETTINGS, token)  # type: ignore[arg-type]
    except AuthError as exc:
        assert str(exc)
        return
    assert isinstance(access, AccessToken)
    assert isinstance(access.identity, str) and 1 <= len(access.identity) <= 128
    assert isinstance(access.room, str) and isinstance(access.name, str)
    assert access.api_key == KEY
    for grant in ("publish", "subscribe", "admin", "agent"):
        assert isinstance(getattr(access.grants, grant), bool)


@fuzz(200)
@given(st.one_of(st.none(), st.text(max_size=300), st.binary(max_size=50).map(b64)))
def test_token_arbitrary_text(token) -> None:
    check_token(token)


@fuzz(300)
@given(
    st.one_of(json_values, st.dictionaries(st.text(max_size=5), json_values)),
    st.one_of(json_values, claims),
    st.binary(max_size=40),
)
def test_token_jwt_shaped_junk(header, payload, signature: bytes) -> None:
    """Three base64url segments of arbitrary JSON and bytes, unsigned."""
    token = ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )
    check_token(token)


@fuzz(300)
@given(claims, st.sampled_from(["HS256", "HS256", "HS384"]), st.sampled_from([SECRET, "x" * 32]))
def test_token_signed_with_arbitrary_claims(payload: dict, alg: str, secret: str) -> None:
    try:
        token = jwt.encode(payload, secret, algorithm=alg)
    except (TypeError, ValueError):
        return  # claims PyJWT itself cannot encode (e.g. NaN exp): no token to send
    check_token(token)


@pytest.mark.parametrize("data", corpus("token"))
def test_token_corpus(data: bytes) -> None:
    check_token(data.decode("utf-8").strip())
