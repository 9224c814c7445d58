"""What the node tells webhooks: room, participant, track and agent-job events.

Events (field `event`): room_started, room_finished, participant_joined, participant_left,
track_published, track_unpublished (from the room registry, sfu/room.py), agent_job_started,
agent_job_ended (from the agent dispatcher, sfu/agents/dispatcher.py), recording_started and
recording_ended (from sfu/recording/, with `recording`). Every body has `id` (unique;
retries repeat it), `event`, `seq` (increasing per node), `created_at` (unix seconds),
`node_id`, `region` and `room` {name, sid, created_at, num_participants}; then
`participant` {sid, identity, name, kind, metadata, joined_at} (only `identity` on a
track_unpublished while its publisher leaves), `track` {id, kind, publisher, source, name,
codec, simulcast} or `job` (as GET /api/agents lists it) where the event has one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .sender import WebhookNotifier

if TYPE_CHECKING:
    from ..agents import AgentJob
    from ..media.producer import Producer
    from ..node import SfuNode
    from ..room import Room
    from ..rooms.participant import Participant

EVENTS = (
    "room_started",
    "room_finished",
    "participant_joined",
    "participant_left",
    "track_published",
    "track_unpublished",
    "agent_job_started",
    "agent_job_ended",
    "recording_started",  # sfu/recording/routes.py
    "recording_ended",
)

WEBHOOKS_KEY: web.AppKey[WebhookNotifier] = web.AppKey("webhooks", WebhookNotifier)


def room_json(room: Room) -> dict[str, Any]:
    return {
        "name": room.name,
        "sid": room.sid,
        "created_at": round(room.created_at, 3),
        "num_participants": len(room.participants),
    }


def participant_json(participant: Participant) -> dict[str, Any]:
    return {
        "sid": participant.sid,
        "identity": participant.identity,
        "name": participant.name,
        "kind": participant.kind.value,
        "metadata": participant.metadata,
        "joined_at": round(participant.joined_at, 3),
    }


def track_json(producer: Producer) -> dict[str, Any]:
    return producer.info.to_json() | {"simulcast": producer.simulcast}


class WebhookEvents:
    """Turns room-registry and dispatcher callbacks into notifier events."""

    def __init__(self, notifier: WebhookNotifier) -> None:
        self.notifier = notifier

    def on_room_event(
        self,
        event: str,
        room: Room,
        participant: Participant | None,
        producer: Producer | None,
    ) -> None:
        data: dict[str, Any] = {"room": room_json(room)}
        if participant is not None:
            data["participant"] = participant_json(participant)
        if producer is not None:
            data["track"] = track_json(producer)
            # unpublished while its publisher leaves: only the identity is left to tell
            data.setdefault("participant", {"identity": producer.info.publisher})
        self.notifier.notify(event, room.name, data)

    def on_job_event(self, event: str, job: AgentJob) -> None:
        self.notifier.notify(event, job.room, {"room": {"name": job.room}, "job": job.to_json()})


def add_webhooks(app: web.Application, node: SfuNode) -> WebhookNotifier | None:
    """Wire webhooks into `node` when `[webhooks] urls` lists any; None otherwise."""
    settings = node.config.webhooks
    if not settings.urls:
        return None
    notifier = WebhookNotifier(
        settings, node.config.auth, node_id=node.node_id, region=node.config.server.region
    )
    events = WebhookEvents(notifier)
    node.rooms.observers.append(events.on_room_event)
    from ..agents import AGENTS_KEY

    dispatcher = app.get(AGENTS_KEY)
    if dispatcher is not None:
        dispatcher.job_listeners.append(events.on_job_event)
    app[WEBHOOKS_KEY] = notifier

    async def close(app: web.Application) -> None:
        await notifier.close()

    app.on_cleanup.append(close)
    return notifier
