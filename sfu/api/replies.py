"""JSON error answers and JSON-object request bodies, shared by the HTTP APIs so that every
route answers a bad body with the same `{"error", "message"}` shape and status."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def json_error(status: int, code: str, message: str) -> web.Response:
    """The `{"error": code, "message": message}` answer with this status."""
    return web.json_response({"error": code, "message": message}, status=status)


async def json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object body, or the 400 to answer."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return json_error(400, "bad_request", "body must be JSON")
    if not isinstance(body, dict):
        return json_error(400, "bad_request", "body must be a JSON object")
    return body
