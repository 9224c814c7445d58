"""The browser SDK route, and (demo config only) the demo pages and their token endpoint.

`/sdk/sfu-client.js` is always served: a shop's own pages load the SDK from the node they talk
to, so the two always match. The pages under `/` and `/demo/`, and `POST /demo/token`, exist
only when `server.demo_tokens` is on: that endpoint gives a token to anyone who asks.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

from aiohttp import web

from .auth import Grants, mint_token
from .node import SfuNode

STATIC = Path(__file__).parent / "static"
SDK_DIR = STATIC / "sdk"
DEMO_DIR = STATIC / "demo"

# What each demo role may do. Viewers only watch (they can still chat: data needs no grant).
ROLES: dict[str, Grants] = {
    "host": Grants(publish=True, subscribe=True),
    "viewer": Grants(subscribe=True),
    "buyer": Grants(publish=True, subscribe=True),
    "assistant": Grants(publish=True, subscribe=True),
}
# Demo tokens are short-lived: enough for one show or call.
DEMO_TOKEN_TTL_S = 2 * 3600
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_SDK_FILES = {p.name for p in SDK_DIR.glob("*.js")}


def add_demo_routes(app: web.Application, node: SfuNode) -> None:
    """Always the SDK; the demo pages and token endpoint only with `server.demo_tokens`."""
    app.router.add_get("/sdk/{name}", _sdk_file)
    if not node.config.server.demo_tokens:
        return

    async def demo_token(request: web.Request) -> web.Response:
        return await _demo_token(request, node)

    app.router.add_post("/demo/token", demo_token)
    app.router.add_get("/", _index)
    app.router.add_static("/demo/", DEMO_DIR, show_index=False, follow_symlinks=False)


async def _sdk_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _SDK_FILES:
        raise web.HTTPNotFound()
    # Any origin may import the module (a shop's pages live on its own domain).
    return web.FileResponse(
        SDK_DIR / name,
        headers={
            "Content-Type": "text/javascript; charset=utf-8",
            "Access-Control-Allow-Origin": "*",
            "Cache-Control": "no-cache",
        },
    )


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(DEMO_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": "bad_request", "message": message}, status=400)


async def _demo_token(request: web.Request, node: SfuNode) -> web.Response:
    """{room, role, identity?, name?} -> {token, url, identity, room, role}."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _bad_request("body must be JSON")
    if not isinstance(body, dict):
        return _bad_request("body must be a JSON object")
    room, role = body.get("room"), body.get("role")
    identity, name = body.get("identity"), body.get("name")
    if not isinstance(room, str) or not _ID.match(room):
        return _bad_request("'room' must be 1-64 characters: letters, digits, _ . : -")
    if role not in ROLES:
        return _bad_request(f"'role' must be one of {', '.join(ROLES)}")
    if identity is None:
        identity = f"{role}-{secrets.token_hex(4)}"
    elif not isinstance(identity, str) or not _ID.match(identity):
        return _bad_request("'identity' must be 1-64 characters: letters, digits, _ . : -")
    if name is not None and not isinstance(name, str):
        return _bad_request("'name' must be a string")
    token = mint_token(
        node.config.auth,
        identity=identity,
        room=room,
        grants=ROLES[role],
        ttl_s=DEMO_TOKEN_TTL_S,
        name=(name or "").strip()[:64],
    )
    # The node's base URL as this client reaches it (works under a sub-app prefix too).
    prefix = request.path[: -len("/demo/token")]
    url = f"{request.scheme}://{request.host}{prefix}"
    return web.json_response(
        {"token": token, "url": url, "identity": identity, "room": room, "role": role}
    )
