"""The agent routes: the admin API of agent jobs and the agent workers' socket.

* `POST /api/rooms/{room}/agents` `{"kind"?, "unless_active"?}`: a job for the room (node-wide
  admin token, or a room admin token for its own room); with `"unless_active": true` the
  room's active job of that kind is answered (200) instead of a second one;
* `GET /api/agents`: workers and jobs (a room admin: its room's jobs only);
* `DELETE /api/agents/{job_id}`: end a job;
* `GET /api/agent-workers/ws`: a worker's socket (node-wide `agent` token; protocol in
  sfu/agents/dispatcher.py).
"""

from __future__ import annotations

import json

from aiohttp import WSMsgType, web

from ..agents.dispatcher import AGENTS_KEY, AgentDispatcher
from ..agents.jobs import DEFAULT_KIND, valid_kind
from ..auth import require_grant
from ..node import SfuNode


def add_agent_routes(app: web.Application, node: SfuNode) -> AgentDispatcher:
    """The dispatcher for `node` and its routes (admin API and the workers' socket)."""
    dispatcher = AgentDispatcher(node)
    app[AGENTS_KEY] = dispatcher

    async def create(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        require_grant(request, "admin", room=room)
        kind, unless_active = DEFAULT_KIND, False
        if request.can_read_body:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                return _bad_request('body must be JSON (optional: {"kind": "agent"})')
            if body is not None:
                if not isinstance(body, dict):
                    return _bad_request("body must be a JSON object")
                kind = body.get("kind", DEFAULT_KIND)
                unless_active = body.get("unless_active", False)
        if not isinstance(unless_active, bool):
            return _bad_request("'unless_active' must be true or false")
        if not valid_kind(kind):
            return _bad_request("'kind' must be a short lower-case name such as \"agent\"")
        if not room or len(room) > 128:
            return _bad_request("bad room name")
        if unless_active and (active := dispatcher.active_jobs(room, kind)):
            job = active[0]  # the room's job already (another worker asked for it first)
            return web.json_response(job.to_json() | {"job_id": job.id}, status=200)
        job = dispatcher.create_job(room, kind, source="admin")
        return web.json_response(job.to_json() | {"job_id": job.id}, status=201)

    async def listing(request: web.Request) -> web.Response:
        access = require_grant(request, "admin")
        return web.json_response(dispatcher.info(None if access.node_wide else access.room))

    async def delete(request: web.Request) -> web.Response:
        access = require_grant(request, "admin")
        job = dispatcher.jobs.get(request.match_info["job_id"])
        if job is None or not access.allows_room(job.room):  # another room's job: not shown
            return web.json_response({"error": "not_found"}, status=404)
        dispatcher.end_job(job, "ended by an admin")
        return web.json_response(job.to_json())

    async def worker_socket(request: web.Request) -> web.StreamResponse:
        """GET /api/agent-workers/ws: a worker's socket (node-wide token, `agent` grant)."""
        access = require_grant(request, "agent", node_wide=True, query_token=True)
        ws = web.WebSocketResponse(max_msg_size=node.config.limits.max_message_bytes)
        await ws.prepare(request)
        worker = dispatcher.connect(ws, access.identity)
        node.websockets.add(ws)
        try:
            async for raw in ws:
                if raw.type != WSMsgType.TEXT:
                    break
                try:
                    msg = json.loads(raw.data)
                    if not isinstance(msg, dict):
                        raise ValueError("messages must be JSON objects")
                    dispatcher.on_worker_message(worker, msg)
                except ValueError as exc:
                    await ws.send_json({"type": "error", "message": str(exc)})
        finally:
            node.websockets.discard(ws)
            dispatcher.disconnected(worker)
        return ws

    async def on_shutdown(app: web.Application) -> None:
        await dispatcher.close()

    app.router.add_post("/api/rooms/{room}/agents", create)
    app.router.add_get("/api/agents", listing)
    app.router.add_delete("/api/agents/{job_id}", delete)
    app.router.add_get("/api/agent-workers/ws", worker_socket)
    app.on_shutdown.append(on_shutdown)
    return dispatcher


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": "bad_request", "message": message}, status=400)
