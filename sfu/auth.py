"""Access tokens: JWTs (HS256) naming a room, an identity and what the bearer may do.

The API key goes in `iss` so a node with several keys knows which secret checks the signature.

Scopes (README, "Token model and scopes"):

* `room` names one room, or is `"*"` (or absent/empty) for the whole node.
* `grants` are JSON booleans: `publish`, `subscribe` (media in a room), `admin` (the admin API),
  `agent` (machines: agent workers and captioners). Anything but `true`/`false` makes the token
  malformed (401): a string "false" must never read as true.
* A room token acts in its own room only: a room admin lists, inspects and starts agents in
  that room, a room agent token (a captioner's) posts that room's captions.
* A node-wide token acts in every room, but only with `admin` or `agent`: a node-wide admin
  sees every room; agent workers need a node-wide `agent` token to register (their job tokens
  are minted per room by the node). Node-wide `publish`/`subscribe` alone allow no room.

`check_access(access, ...)` is the one scope check; `require_grant(request, ...)` applies it to
the HTTP API handlers, and the join path (sfu/rooms/joins.py) to every join, WHIP and WHEP
request.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import jwt
from aiohttp import web

from .config import AuthSettings

NODE_WIDE_ROOMS = ("", "*")


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

    @property
    def node_wide(self) -> bool:
        """A token for every room (`room` "*" or empty); it acts there only as admin or agent."""
        return self.room in NODE_WIDE_ROOMS

    def allows_room(self, room: str) -> bool:
        return (self.node_wide and (self.grants.admin or self.grants.agent)) or (self.room == room)

    def require_room(self, room: str) -> None:
        if not self.allows_room(room):
            raise PermissionDenied(f"token is for room {self.room!r}, not {room!r}")

    def require(self, grant: str) -> None:
        if not getattr(self.grants, grant):
            raise PermissionDenied(f"token lacks the {grant!r} grant")

    def require_any(self, grants: tuple[str, ...]) -> None:
        if not any(getattr(self.grants, g) for g in grants):
            raise PermissionDenied(f"token lacks the {' or '.join(map(repr, grants))} grant")

    def require_node_wide(self) -> None:
        if not self.node_wide:
            raise PermissionDenied(
                f'this needs a node-wide token (room "*"); this one is for room {self.room!r}'
            )


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
    values = {k: raw_grants.get(k, False) for k in Grants.__dataclass_fields__}
    for name, value in values.items():
        if not isinstance(value, bool):  # "false" (a string) must not count as true
            raise AuthError(f"token grant {name!r} must be true or false, not {value!r:.20}")
    grants = Grants(**values)
    return AccessToken(
        identity=identity,
        room=room,
        grants=grants,
        name=str(claims.get("name", identity)),
        api_key=key,
        expires_at=float(claims["exp"]),
    )


# -- the HTTP check ----------------------------------------------------------------------------

AUTH_KEY: web.AppKey[AuthSettings] = web.AppKey("sfu_auth_settings", AuthSettings)


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer …` header, or None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _refusal(error: type[web.HTTPException], code: str, message: str) -> web.HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if error is web.HTTPUnauthorized else None
    return error(
        text=json.dumps({"error": code, "message": message}),
        content_type="application/json",
        headers=headers,
    )


def require_grant(
    request: web.Request,
    *grants: str,
    room: str | None = None,
    node_wide: bool = False,
    query_token: bool = False,
) -> AccessToken:
    """The request's verified token if it holds one of `grants` (and may act in `room`, and is
    node-wide when `node_wide`); else raise 401 (no/bad token) or 403 (not allowed) with a
    JSON body `{"error": "unauthorized"|"forbidden", "message"}`.

    `query_token` also takes `?access_token=` (WebSocket clients that cannot set headers).
    """
    token = bearer_token(request)
    if token is None and query_token:
        token = request.query.get("access_token") or None
    try:
        access = verify_token(request.app[AUTH_KEY], token)
    except AuthError as exc:
        raise _refusal(web.HTTPUnauthorized, "unauthorized", str(exc)) from None
    try:
        check_access(access, *grants, room=room, node_wide=node_wide)
    except PermissionDenied as exc:
        raise _refusal(web.HTTPForbidden, "forbidden", str(exc)) from None
    return access


def check_access(
    access: AccessToken, *grants: str, room: str | None = None, node_wide: bool = False
) -> None:
    """The one scope check: raise PermissionDenied unless `access` holds one of `grants` (any
    token when none is named), is node-wide when `node_wide`, and may act in `room`.

    require_grant() answers HTTP API requests with it; the join path (sfu/rooms/joins.py)
    checks every join, WHIP and WHEP request with it and answers in each surface's format.
    """
    if grants:
        access.require_any(grants)
    if node_wide:
        access.require_node_wide()
    if room is not None:
        access.require_room(room)
