"""The front of `serve --workers N`: the one public HTTP port, a reverse proxy that keeps no
media and no per-session state.

* Requests that open a session go to the worker with the fewest sessions the front has
  counted (ties: round robin): the WebSocket `/rtc`, `POST /rtc/join`, `POST /whip/{room}`,
  `POST /whep/{room}`.
* Follow-ups reach the same worker because the front tags what the worker hands out with the
  worker's index, `<i>.<id>`: the WHIP/WHEP resource in `Location`, the HTTP join's `session`.
  The tag is stripped again on the way in (`DELETE`/`PATCH` on the resource, `/rtc/answer`,
  `/rtc/leave`, `/rtc?session=`); nothing is remembered per session.
* `/_worker/<i>/<path>` goes to worker i as `/<path>` (node-to-node relay requests; an
  operator's per-worker `/api/stats` or `/metrics`).
* `/healthz` answers for the whole machine: 200 when every worker is up.
* Everything else (`/api/...`, the agent workers' socket, recordings, captions, demo pages,
  `/metrics`) goes to worker 0.

Bodies are limited as the nodes limit them; WebSocket messages are relayed one at a time in
each direction (a slow reader holds back its sender only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .plan import WORKER_PREFIX

logger = logging.getLogger(__name__)

# headers of one hop only (RFC 9110 7.6.1), never passed on
HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
WS_HEADERS = ("Authorization", "Cookie", "Origin", "User-Agent")
MAX_TAG = 256  # a tagged id is short: a worker index, a dot, a token
SESSION_PATHS = ("/rtc/answer", "/rtc/leave")
_WHIP = re.compile(r"^/(whip|whep)/([^/]+)/?$")
_WHIP_RESOURCE = re.compile(r"^/(whip|whep)/([^/]+)/([^/]+)/?$")


def tag(index: int, value: str) -> str:
    return f"{index}.{value}"


def untag(value: object, workers: int) -> tuple[int, str] | None:
    """`<i>.<id>` -> (i, id); None for anything else (unknown worker, no tag, too long)."""
    if not isinstance(value, str) or len(value) > MAX_TAG:
        return None
    head, dot, rest = value.partition(".")
    if not dot or not rest or not head.isascii() or not head.isdigit() or len(head) > 3:
        return None
    index = int(head)
    return (index, rest) if index < workers else None


def session_followup(body: bytes, workers: int) -> tuple[int, bytes] | str:
    """A `/rtc/answer` or `/rtc/leave` body: (worker, the body with its `session` untagged),
    or why not ("bad_request": not a JSON object; "no_session": no tagged session)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "bad_request"
    if not isinstance(data, dict):
        return "bad_request"
    found = untag(data.get("session"), workers)
    if found is None:
        return "no_session"
    data["session"] = found[1]
    return found[0], json.dumps(data).encode()


@dataclass
class Backend:
    """One worker as the front sees it."""

    index: int
    url: str
    node_id: str = ""
    ready: bool = False  # answered /healthz since it last started
    sessions: int = 0  # open sessions the front counted (WebSockets, WHIP/WHEP resources)
    restarts: int = 0


@dataclass
class Front:
    backends: list[Backend]
    max_body: int  # bytes in one request body or WebSocket message (the nodes' limit)
    draining: bool = False
    _next: int = 0
    _http: aiohttp.ClientSession | None = field(default=None, repr=False)

    # -- choosing a worker ------------------------------------------------------------------

    def choose(self) -> Backend | None:
        """The ready worker with the fewest counted sessions; ties in turn."""
        ready = [b for b in self.backends if b.ready]
        if not ready:
            return None
        fewest = min(b.sessions for b in ready)
        n = len(self.backends)
        for k in range(n):
            backend = self.backends[(self._next + k) % n]
            if backend.ready and backend.sessions == fewest:
                self._next = (backend.index + 1) % n
                return backend
        return None  # (not reached)

    def tagged(self, value: object) -> tuple[Backend, str] | None:
        found = untag(value, len(self.backends))
        return (self.backends[found[0]], found[1]) if found else None

    # -- the application ------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, app: web.Application) -> None:
        self._http = aiohttp.ClientSession(
            # each proxied WebSocket holds a connection for its lifetime: no pool limit (the
            # default 100 would hold the 101st viewer's join); the nodes limit their sessions
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=120),
        )

    async def _close(self, app: web.Application) -> None:
        if self._http is not None:
            await self._http.close()

    async def healthz(self, request: web.Request) -> web.Response:
        up = all(b.ready for b in self.backends)
        status = "draining" if self.draining else "ok" if up else "degraded"
        workers = [
            {"index": b.index, "node_id": b.node_id, "ready": b.ready, "restarts": b.restarts}
            for b in self.backends
        ]
        return web.json_response(
            {"status": status, "workers": workers}, status=200 if status == "ok" else 503
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        raw = request.raw_path
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if path.startswith(WORKER_PREFIX):
            head, _, rest = path[len(WORKER_PREFIX) :].partition("/")
            found = untag(f"{head}.x", len(self.backends))
            if found is None:
                return _problem(404, "no such worker")
            backend = self.backends[found[0]]
            raw_rest = "/" + raw[len(WORKER_PREFIX) :].partition("/")[2]
            if upgrade:
                return await self._websocket(request, backend, raw_rest.partition("?")[0])
            return await self._pass(request, backend, raw_rest)
        if path == "/rtc" and method == "GET":
            return await self._rtc_socket(request)
        if upgrade:  # e.g. the agent workers' socket
            return await self._websocket(request, self.backends[0], raw.partition("?")[0])
        if method == "POST" and path == "/rtc/join":
            return await self._fresh(request, self._tag_session)
        if method == "POST" and path in SESSION_PATHS:
            return await self._session_followup(request)
        if method == "POST" and _WHIP.match(path):
            return await self._fresh(request, self._tag_location)
        match = _WHIP_RESOURCE.match(raw.partition("?")[0])
        if match and method != "OPTIONS":
            found = self.tagged(match.group(3))
            if found is None:
                return _problem(404, "no such session")
            backend, resource = found
            target = f"/{match.group(1)}/{match.group(2)}/{resource}"
            response = await self._pass(request, backend, target)
            if method == "DELETE" and response.status in (200, 204, 404):
                backend.sessions = max(0, backend.sessions - 1)
            return response
        return await self._pass(request, self.backends[0], raw)

    # -- sessions ---------------------------------------------------------------------------

    async def _fresh(
        self,
        request: web.Request,
        rewrite: Callable[[Backend, web.Response], Awaitable[web.Response]],
    ) -> web.StreamResponse:
        backend = self.choose()
        if backend is None:
            return _problem(503, "no worker is ready")
        response = await self._pass(request, backend, request.raw_path, buffered=True)
        assert isinstance(response, web.Response)
        return await rewrite(backend, response)

    async def _tag_location(self, backend: Backend, response: web.Response) -> web.Response:
        location = response.headers.get("Location")
        if response.status == 201 and location:
            head, _, resource = location.rpartition("/")
            response.headers["Location"] = f"{head}/{tag(backend.index, resource)}"
            backend.sessions += 1
        return response

    async def _tag_session(self, backend: Backend, response: web.Response) -> web.Response:
        if response.status != 200 or response.body is None:
            return response
        try:
            reply = json.loads(bytes(response.body))  # type: ignore[arg-type]
        except ValueError:
            return response
        if isinstance(reply, dict) and isinstance(reply.get("session"), str):
            reply["session"] = tag(backend.index, reply["session"])
            response.body = json.dumps(reply).encode()
        return response

    async def _session_followup(self, request: web.Request) -> web.StreamResponse:
        found = session_followup(await request.read(), len(self.backends))
        if isinstance(found, str):
            return _json_problem(400 if found == "bad_request" else 404, found, found)
        index, body = found
        return await self._pass(request, self.backends[index], request.raw_path, body=body)

    # -- HTTP -------------------------------------------------------------------------------

    def _headers(self, request: web.Request) -> CIMultiDict[str]:
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS
        )
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        return headers

    async def _pass(
        self,
        request: web.Request,
        backend: Backend,
        target: str,
        *,
        body: bytes | None = None,
        buffered: bool = False,
    ) -> web.StreamResponse:
        """Send the request to `backend` at `target` (raw path + query); the answer comes
        back streamed, or read whole when `buffered` (small answers the front rewrites)."""
        assert self._http is not None
        if body is None and request.body_exists:
            body = await request.read()  # (bounded by client_max_size)
        if "?" not in target and request.query_string:
            target = f"{target}?{request.query_string}"
        try:
            async with self._http.request(
                request.method,
                backend.url + target,
                headers=self._headers(request),
                data=body,
                allow_redirects=False,
            ) as upstream:
                headers = CIMultiDict(
                    (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS
                )
                if buffered:
                    data = await upstream.content.read(self.max_body + 1)
                    if len(data) > self.max_body:
                        return _problem(502, "worker answer too large")
                    return web.Response(status=upstream.status, body=data, headers=headers)
                response = web.StreamResponse(status=upstream.status, headers=headers)
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            logger.warning("front: worker %d did not answer: %s", backend.index, exc or repr(exc))
            return _problem(502, f"worker {backend.index} did not answer")

    # -- WebSocket --------------------------------------------------------------------------

    async def _rtc_socket(self, request: web.Request) -> web.StreamResponse:
        """The signalling socket: a new session to the chosen worker, an HTTP join's
        (`?session=<i>.<id>`) to worker i."""
        query = dict(request.query)
        if "session" in query:
            found = self.tagged(query["session"])
            if found is None:
                return _problem(404, "no such session")
            backend, query["session"] = found
        else:
            chosen = self.choose()
            if chosen is None:
                return _problem(503, "no worker is ready")
            backend = chosen
        backend.sessions += 1
        try:
            return await self._websocket(request, backend, request.path, query)
        finally:
            backend.sessions = max(0, backend.sessions - 1)

    async def _websocket(
        self,
        request: web.Request,
        backend: Backend,
        target: str,
        query: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """Open the same socket at `backend` and relay messages both ways until one closes."""
        query = dict(request.query) if query is None else query
        assert self._http is not None
        headers = {k: request.headers[k] for k in WS_HEADERS if k in request.headers}
        headers.update(
            (k, v) for k, v in self._headers(request).items() if k.startswith("X-Forwarded")
        )
        try:
            upstream = await self._http.ws_connect(
                backend.url + target,
                params=query,
                headers=headers,
                max_msg_size=self.max_body,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            )
        except aiohttp.WSServerHandshakeError as exc:
            return _problem(exc.status or 502, exc.message or "refused")
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            logger.warning("front: worker %d socket refused: %s", backend.index, exc)
            return _problem(502, f"worker {backend.index} did not answer")
        client = web.WebSocketResponse(max_msg_size=self.max_body)
        try:
            await client.prepare(request)
            pumps = [
                asyncio.ensure_future(_pump(client, upstream)),
                asyncio.ensure_future(_pump(upstream, client)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                for pump in pumps:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pump
        finally:
            code = upstream.close_code or client.close_code or 1000
            with contextlib.suppress(Exception):
                await upstream.close(code=client.close_code or 1000)
            with contextlib.suppress(Exception):
                await client.close(code=code)
        return client


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for message in source:
        if message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        else:  # close or error: the other side is closed by the caller
            return


def _problem(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n", content_type="text/plain")


def _json_problem(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)
