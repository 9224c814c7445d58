"""The one join / publish / subscribe path. Every surface (WebSocket, HTTP join, WHIP, WHEP)
decodes its wire format, then comes here; nothing else creates participants or media sessions.

A join, in order (each step raises JoinError with a code the surface translates):

1. `authenticate(token)` and `authorize(access, room, grant)`: the token, its room and grants
   (sfu/auth.py check_access, the same check as the HTTP API's).
2. `check_offer(sdp)`: the offer caps ([limits] max_media_per_offer, max_rids_per_media),
   before anything is allocated; `whep_slot(identity)`: WHEP players per token identity.
3. `join(...)`: `open_room()` finds or creates the room, a Participant is made, `prepare`
   (if given) sets up its media before anyone sees it, then `admit()` adds it to the room.
4. `publish()` / `open_subscriber()` / `subscribe()`: the MediaPeers and what flows over them;
   `announce()` tells the room about newly published tracks.
5. The surface answers (a `joined` message, a 201 with an SDP answer, ...).

**Where the cluster plugs in.** The node's cluster membership (node.cluster, sfu/cluster/)
records who joined and what they publish from the rooms' events. `open_room()` is the one call
site that decides where a room lives: routing asks the room directory there whether this node
serves the room (or which node does), and a refusal is a JoinError the surfaces already know
how to answer. `relay_data()` is the one place a data message fans out to a room's
participants, so messages for participants on other nodes leave from there too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..auth import AccessToken, AuthError, PermissionDenied, check_access
from ..media.publisher import PublisherSession, TrackRequest
from ..media.sdp import SdpError, check_offer_size
from ..media.subscriber import SendOffer, SubscriberSession
from ..room import Room, RoomFull, TooManyRooms
from .participant import Participant, ParticipantKind
from .timeline import JoinTimeline

if TYPE_CHECKING:
    from ..media.producer import Producer
    from ..node import SfuNode

logger = logging.getLogger(__name__)


DRAINING = "this node is shutting down (draining) and takes no joins: join another node"


class JoinError(Exception):
    """A join or media request refused; `code` is the signalling error code (docs/protocol.md),
    which each surface turns into its own answer (an `error` message, an HTTP status)."""

    def __init__(self, code: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}  # more fields of the error message (a redirect's node)


@dataclass
class Published:
    """A publish offer answered: `answer` ({sdp, tracks}) and the producers it added, which
    the caller announces (announce()) once its own answer is on its way."""

    answer: dict[str, Any]
    added: list[Producer]


# prepare(participant, room): media set up before the participant enters the room
Prepare = Callable[[Participant, Room], Awaitable[None]]


class JoinService:
    """The join path of one node (stateless but for the WHEP players being answered)."""

    def __init__(self, node: SfuNode) -> None:
        self.node = node
        self._whep_starting: dict[str, int] = {}  # token identity -> WHEP answers under way

    # -- 1. who -----------------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> AccessToken:
        try:
            return self.node.authenticate(token)
        except AuthError as exc:
            raise JoinError("unauthorized", str(exc)) from exc

    @staticmethod
    def authorize(access: AccessToken, room: str, *grants: str) -> None:
        """May `access` act in `room` (holding one of `grants`, when any is named)?"""
        try:
            check_access(access, *grants, room=room)
        except PermissionDenied as exc:
            raise JoinError("forbidden", str(exc)) from exc

    # -- 2. limits --------------------------------------------------------------------------------

    def check_offer(self, sdp: str) -> None:
        """The offer caps, checked before anything is allocated for the offer."""
        limits = self.node.config.limits
        try:
            check_offer_size(
                sdp, max_media=limits.max_media_per_offer, max_rids=limits.max_rids_per_media
            )
        except SdpError as exc:
            raise JoinError("bad_sdp", str(exc)) from exc

    def whep_sessions(self, token_identity: str) -> int:
        """WHEP players (started or being started) this node holds for one token identity."""
        started = sum(
            1
            for p in self.node.http_sessions.values()
            if p.kind == ParticipantKind.WHEP and p.token_identity == token_identity
        )
        return started + self._whep_starting.get(token_identity, 0)

    @contextlib.contextmanager
    def whep_slot(self, token_identity: str) -> Iterator[None]:
        """Hold one of the identity's WHEP slots while its player is being answered (each
        player is its own participant: without a cap, one viewer token fills a room)."""
        cap = self.node.config.limits.max_whep_sessions_per_identity
        if self.whep_sessions(token_identity) >= cap:
            raise JoinError(
                "too_many",
                f"too many WHEP sessions for {token_identity!r}: at most {cap}; DELETE one first",
            )
        starting = self._whep_starting
        starting[token_identity] = starting.get(token_identity, 0) + 1
        try:
            yield
        finally:
            left = starting.pop(token_identity) - 1
            if left:
                starting[token_identity] = left

    # -- 3. the room ------------------------------------------------------------------------------

    def open_room(self, name: str) -> Room:
        """The room `name` on this node, created if need be.

        The room directory's call site: every join on every surface passes here once.
        A draining node (SIGTERM, sfu/cluster/drain.py) takes no joins.
        """
        if self.node.draining:
            raise JoinError("draining", DRAINING)
        try:
            return self.node.rooms.get_or_create(name)
        except TooManyRooms as exc:
            raise JoinError("node_full", str(exc)) from exc

    async def join(
        self,
        access: AccessToken,
        room_name: str,
        kind: ParticipantKind,
        *,
        identity: str | None = None,
        name: str | None = None,
        metadata: dict | None = None,
        auto_subscribe: bool = True,
        timeline: JoinTimeline | None = None,
        prepare: Prepare | None = None,
    ) -> Participant:
        """Open the room, make the participant, `prepare` its media, admit it.

        On any failure nothing stays behind: the participant is closed and a room it would
        have been alone in is discarded.
        """
        route = self.node.router.route()  # which node serves it (docs/cluster.md, Routing)
        if route.redirect:
            raise JoinError(
                "redirect",
                f"this node is full: join {route.node['url']}",
                {"node": route.node, "fallbacks": route.fallbacks},
            )
        room = self.open_room(room_name)
        try:  # the room's other nodes, so that the join answer lists them
            await self.node.remote_rooms.prepare(room)
        except BaseException:
            self.node.rooms.discard(room)
            raise
        participant = Participant(
            identity=identity or access.identity,
            name=access.name if name is None else name,
            kind=kind,
            grants=access.grants,
            room=room,
            auto_subscribe=auto_subscribe,
            metadata=metadata,
            limits=self.node.config.limits,
            token_identity=access.identity,
        )
        participant.join_timeline = timeline
        participant.route = {"node": route.node}
        try:
            if prepare is not None:
                await prepare(participant, room)
            await self.admit(room, participant)
        except BaseException:
            await participant.close()
            self.node.rooms.discard(room)
            raise
        if timeline is not None:
            self.node.joins.add(timeline)
            timeline.attach(participant.probe_join)
        return participant

    @staticmethod
    async def admit(room: Room, participant: Participant) -> None:
        try:
            await room.add(participant)
        except RoomFull as exc:
            raise JoinError("room_full", str(exc)) from exc

    async def leave(self, participant: Participant) -> None:
        await participant.room.remove(participant)

    # -- 4. media ---------------------------------------------------------------------------------

    async def publish(
        self,
        participant: Participant,
        sdp: str,
        requests: list[TrackRequest] | None = None,
        *,
        label: str = "",
        checked: bool = False,
    ) -> Published:
        """Answer a publish offer (opening the publisher connection on the first one).

        `checked`: the offer caps were checked already. The tracks it adds are not announced
        yet (announce()).
        """
        if not participant.grants.publish:
            raise JoinError("forbidden", "token lacks the 'publish' grant")
        if not checked:
            self.check_offer(sdp)
        node = self.node
        limits = node.config.limits
        created = participant.publisher is None
        if created:
            participant.publisher = PublisherSession(
                identity=participant.identity,
                network=node.network,
                rtc=node.config.rtc,
                max_tracks=limits.max_tracks_per_participant,
                label=label,
            )
        try:
            answer, added = await participant.publisher.negotiate(sdp, requests)
        except SdpError as exc:
            if created and participant.publisher is not None:
                # Nothing was negotiated: drop the connection rather than let its connect
                # watchdog drop the whole participant later.
                publisher, participant.publisher = participant.publisher, None
                await publisher.close()
            raise JoinError("bad_sdp", str(exc)) from exc
        if created:
            participant.watch(participant.publisher.peer, limits.connect_timeout_s)
        mids = {p.id: mid for mid, p in participant.publisher.producers.items()}
        tracks = [{**p.info.to_json(), "mid": mids.get(p.id)} for p in added]
        return Published({"sdp": answer, "tracks": tracks}, added)

    @staticmethod
    def announce(participant: Participant, producers: list[Producer]) -> None:
        """Tell the room about tracks `participant` has just published."""
        for producer in producers:
            participant.room.publish(participant, producer)

    @staticmethod
    def unpublish(participant: Participant, track_id: str) -> None:
        if participant.publisher is None or participant.publisher.unpublish(track_id) is None:
            raise JoinError("not_found", f"you publish no track {track_id!r}")

    def open_subscriber(
        self, participant: Participant, *, send_offer: SendOffer | None = None, label: str = ""
    ) -> SubscriberSession:
        """The participant's subscriber connection (offers go out through `send_offer`)."""
        participant.subscriber = SubscriberSession(
            identity=participant.identity,
            network=self.node.network,
            rtc=self.node.config.rtc,
            send_offer=send_offer,
            label=label,
        )
        return participant.subscriber

    @staticmethod
    def subscribe(participant: Participant, track_ids: list[str]) -> None:
        """Subscribe to tracks of the participant's room, by id."""
        if participant.subscriber is None:
            raise JoinError("forbidden", "token lacks the 'subscribe' grant")
        room = participant.room
        missing = [t for t in track_ids if t not in room.producers]
        if missing:
            raise JoinError("not_found", f"no such track(s): {', '.join(missing)}")
        for track_id in track_ids:
            producer = room.producers[track_id]
            if producer.info.publisher == participant.identity:
                raise JoinError("bad_request", "cannot subscribe to your own track")
            participant.subscriber.subscribe(producer)

    # -- data -------------------------------------------------------------------------------------

    @staticmethod
    def relay_data(
        sender: Participant, topic: str, payload: Any, to: list[str] | None, size: int
    ) -> None:
        """A data message to the sender's room (or the identities in `to`): `size` is what
        it costs in each reader's queue."""
        room = sender.room
        event = {"type": "data", "from": sender.identity, "topic": topic, "payload": payload}
        for other in list(room.participants.values()):
            if other is not sender and (to is None or other.identity in to):
                other.send_event(event, size)
        room.data_relayed(sender, topic, payload, to)
