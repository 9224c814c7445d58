"""The webhook signature: a short-lived HS256 JWT that carries the SHA-256 of the body.

Signed with an API secret from `[auth] api_keys`, the same secret a shop's backend uses to mint
access tokens, so the backend needs no second secret to check that an event came from its node.
Claims: `iss` (the API key), `iat`, `nbf`, `exp` (iat + 5 minutes) and `sha256` (base64 of the
body's SHA-256 digest).
"""

from __future__ import annotations

import base64
import hashlib
import time

import jwt

TOKEN_TTL_S = 300
MAX_TOKEN_TTL_S = 600  # verify_webhook refuses tokens that claim to live longer


def body_digest(body: bytes) -> str:
    """Base64 (standard alphabet, padded) of the body's SHA-256."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def sign_webhook(
    body: bytes,
    api_key: str,
    api_secret: str,
    *,
    ttl_s: int = TOKEN_TTL_S,
    now: float | None = None,
) -> str:
    """The value of the Authorization header (without "Bearer ") for `body`."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": api_key,
        "iat": issued,
        "nbf": issued - 5,
        "exp": issued + ttl_s,
        "sha256": body_digest(body),
    }
    return jwt.encode(claims, api_secret, algorithm="HS256")
