"""Checking a webhook on the receiving side (a shop's backend).

    from sfu.webhooks import verify_webhook, WebhookVerificationError

    body = await request.read()                      # the raw bytes, before any JSON parsing
    try:
        event = verify_webhook(body, request.headers.get("Authorization", ""), KEY, SECRET)
    except WebhookVerificationError:
        return web.Response(status=401)

Deliveries are retried, so the same event (same `id`) can arrive twice: deduplicate on it.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

import jwt

from .signing import MAX_TOKEN_TTL_S, body_digest


class WebhookVerificationError(ValueError):
    """The request was not signed by this API key's secret, has expired, or its body changed."""


def verify_webhook(
    body: bytes, authorization: str, api_key: str, api_secret: str, *, leeway_s: float = 10.0
) -> dict[str, Any]:
    """Check the signature and the body's digest; return the event (the parsed body).

    `authorization` is the request's Authorization header ("Bearer <jwt>" or the bare JWT).
    Raises WebhookVerificationError with a short reason otherwise.
    """
    parts = (authorization or "").split()
    if parts and parts[0].lower() == "bearer":
        parts = parts[1:]
    token = parts[0] if len(parts) == 1 else ""
    if not token:
        raise WebhookVerificationError("missing Authorization header")
    try:
        claims = jwt.decode(
            token,
            api_secret,
            algorithms=["HS256"],
            issuer=api_key,
            leeway=leeway_s,
            options={"require": ["iss", "iat", "exp", "sha256"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise WebhookVerificationError("signature expired") from exc
    except jwt.InvalidIssuerError as exc:
        raise WebhookVerificationError("signed for another API key") from exc
    except jwt.PyJWTError as exc:
        raise WebhookVerificationError(f"bad signature: {exc}") from exc
    if not isinstance(claims["exp"], int | float) or not isinstance(claims["iat"], int | float):
        raise WebhookVerificationError("bad signature: exp and iat must be numbers")
    if claims["exp"] - claims["iat"] > MAX_TOKEN_TTL_S:
        raise WebhookVerificationError("signature lives too long for a webhook")
    digest = claims["sha256"]
    if not isinstance(digest, str) or not hmac.compare_digest(digest, body_digest(body)):
        raise WebhookVerificationError("body does not match its signature")
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookVerificationError("body is not JSON") from exc
    if not isinstance(event, dict):
        raise WebhookVerificationError("body is not a JSON object")
    return event
