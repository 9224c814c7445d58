"""Access tokens: JWTs (HS256) naming a room, an identity and what the bearer may do.

The API key goes in `iss` so a node with several keys knows which secret checks the signature.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import jwt

from .config import AuthSettings


class AuthError(Exception):
    """A token that is missing, malformed, forged or expired (HTTP 401)."""


class PermissionDenied(Exception):
    """A valid token that does not allow the request (HTTP 403)."""


@dataclass(frozen=True)
class Grants:
    publish: bool = False
    subscribe: bool = False
    admin: bool = False
    agent: bool = False


@dataclass(frozen=True)
class AccessToken:
    identity: str
    room: str  # "" or "*" means any room (admin and agent tokens)
    grants: Grants = field(default_factory=Grants)
    name: str = ""
    api_key: str = ""
    expires_at: float = 0.0

    def allows_room(self, room: str) -> bool:
        return (
            self.room in ("", "*")
            and (self.grants.admin or self.grants.agent)
            or (self.room == room)
        )

    def require_room(self, room: str) -> None:
        if not self.allows_room(room):
            raise PermissionDenied(f"token is for room {self.room!r}, not {room!r}")

    def require(self, grant: str) -> None:
        if not getattr(self.grants, grant):
            raise PermissionDenied(f"token lacks the {grant!r} grant")


def mint_token(
    settings: AuthSettings,
    *,
    identity: str,
    room: str,
    grants: Grants,
    ttl_s: int | None = None,
    name: str = "",
    api_key: str | None = None,
) -> str:
    """Sign a token with the secret of `api_key` (the first configured key by default)."""
    key = api_key or next(iter(settings.api_keys))
    secret = settings.api_keys[key]
    now = int(time.time())
    claims = {
        "iss": key,
        "sub": identity,
        "room": room,
        "name": name or identity,
        "grants": asdict(grants),
        "nbf": now - 10,
        "iat": now,
        "exp": now + (ttl_s if ttl_s is not None else settings.default_ttl_s),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(settings: AuthSettings, token: str | None) -> AccessToken:
    """Check signature, expiry and shape; raise AuthError with a short reason otherwise."""
    if not token:
        raise AuthError("missing access token")
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise AuthError("malformed token") from exc
    key = unverified.get("iss")
    secret = settings.api_keys.get(key) if isinstance(key, str) else None
    if secret is None:
        raise AuthError("unknown API key")
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired") from exc
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    identity = claims.get("sub")
    room = claims.get("room", "")
    raw_grants = claims.get("grants", {})
    if not isinstance(identity, str) or not identity or len(identity) > 128:
        raise AuthError("token identity must be a non-empty string")
    if not isinstance(room, str) or not isinstance(raw_grants, dict):
        raise AuthError("token room or grants malformed")
    grants = Grants(**{k: bool(raw_grants.get(k, False)) for k in Grants.__dataclass_fields__})
    return AccessToken(
        identity=identity,
        room=room,
        grants=grants,
        name=str(claims.get("name", identity)),
        api_key=key,
        expires_at=float(claims["exp"]),
    )
